"""Checkpoint files: loaded weights-only so a .pt from elsewhere cannot run code, saved atomically so a crash or a
full disk never leaves a half-written one.

YOLOv5 checkpoints pickle whole nn.Modules, which torch's weights-only loader refuses unless each class is
allow-listed. Here the allow-list is built per file from the globals the file names, admitting only those under
trusted prefixes. Admitted layer classes reach the loader as stand-ins that can be allocated and filled (what
pickling a module needs) but never called, so even an admitted class's __init__ cannot be made to run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import pickle
import pickletools
import re
import secrets
import stat
import struct
import zipfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

import numpy as np
import torch
from torch import nn

from .errors import UserError, one_line
from .paths import local_weights, weights_hint

__all__ = ["DEFAULT_SAFE_PREFIXES", "TRUST_HINT", "CheckpointError", "atomic_file", "find_last_checkpoint", "load_checkpoint",
           "save_checkpoint_atomic"]

PathLike = Union[str, os.PathLike]
# A checkpoint error quotes the first sentence of torch's reason, which runs to paragraphs.
_first_sentence = partial(one_line, limit=160, first_sentence=True)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, refused by the weights-only loader, or cannot be written."""


# Entries ending in "." are module prefixes: they admit the nn.Module subclasses defined under them, rebuilt field by
# field and never called. Other entries are exact names of plain data types and reconstructors, admitted as they are.
# torch itself already admits tensors, storages, Parameter, its rebuild functions, OrderedDict, set and bytes.
DEFAULT_SAFE_PREFIXES: tuple[str, ...] = (
    "torch.nn.modules.",
    # numpy scalars (yolov5's best_fitness is an np.float64) and arrays, under numpy 2.x and 1.x module names
    "numpy.dtype", "numpy.ndarray",
    "numpy._core.multiarray.scalar", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
    # plain values that training options hold
    "argparse.Namespace", "pathlib.PosixPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
)

# Never admitted, whatever prefixes a caller passes: these run commands, touch files, import or unpickle more code,
# or (functools, operator) turn an admitted callable into an arbitrary one.
_FORBIDDEN_MODULES = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "pickle", "marshal",
    "runpy", "code", "codeop", "ctypes", "socket", "io", "tempfile", "multiprocessing", "signal", "pty", "webbrowser",
    "functools", "operator",
})

# Pickles name numpy's reconstructors after the numpy that wrote them; both names lead to the installed one.
_NUMPY_CORE = "numpy._core." if importlib.util.find_spec("numpy._core") else "numpy.core."
_NUMPY_ALIASES = {"numpy.core.": _NUMPY_CORE, "numpy._core.": _NUMPY_CORE}

# The loader must know a dtype's class to restore it, though no pickle names it; object and void dtypes stay out.
_NUMPY_DTYPE_CLASSES = tuple({type(np.dtype(c)) for c in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]})

# No pickle GLOBAL can spell a name with a newline (the opcode's argument ends at one), so a real class registered
# under such a key can be filled in by the loader's BUILD step but never fetched, and so never called, by a pickle.
_BUILD_ONLY = "\nbuild-only "

# What torch.load raises on a damaged file: its zip reader, the pickle machine and the storage reader differ.
_DAMAGED = (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError, OverflowError, struct.error,
            pickle.UnpicklingError)
TRUST_HINT = "pass --trust-checkpoint only if the file comes from a trusted source"


def load_checkpoint(path: PathLike, *, allowed_prefixes: Sequence[str] = (), aliases: Mapping[str, str] | None = None,
                    trust: bool = False, map_location: Any = "cpu") -> Any:
    """Load a checkpoint weights-only, admitting only globals under DEFAULT_SAFE_PREFIXES + allowed_prefixes once
    `aliases` renamed them; trust=True is a full pickle load, for files the user vouches for."""
    path = local_weights(path)
    _check_file(path)
    if trust:
        return _torch_load(path, map_location, weights_only=False)
    allowed = (*DEFAULT_SAFE_PREFIXES, *allowed_prefixes)
    # {"models.": "yolov5.models."} loads an ultralytics-repo checkpoint as the pip package's classes, so that
    # isinstance checks against yolov5.models.yolo hold (the repo names are a second import of the same files).
    renames = {**_NUMPY_ALIASES, **(aliases or {})}
    legacy = not zipfile.is_zipfile(path)
    if legacy:
        # Pre-1.6 files have no listing API; what we do not admit, torch's own allow-list still judges on load.
        entries = _admit_all(path, _legacy_globals(path), allowed, renames, strict=False)
    else:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except _DAMAGED as e:
            raise _damaged(path, e) from e
        entries = _admit_all(path, names, allowed, renames, strict=True)
    with torch.serialization.safe_globals([*entries, *((c, _BUILD_ONLY + c.__name__) for c in _NUMPY_DTYPE_CLASSES)]):
        return _torch_load(path, map_location, weights_only=True, legacy=legacy)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` only once complete and synced: readers see the old file or the
    new one, never half. On any failure (an interrupt too) no temp file is left and the old file stays."""
    path = Path(path)
    # Hidden and not *.pt / *.engine, so globs for finished files never pick up a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # a fresh file, with the same umask-derived mode a plain open would give
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint_atomic(obj: Any, path: PathLike) -> None:
    """torch.save through atomic_file(): a crash or a full disk never leaves a half-written checkpoint."""
    path = Path(path)
    try:
        with atomic_file(path) as f:
            # torch.serialization.save, not torch.save: importing yolov5 imports ultralytics, which replaces
            # torch.save with a wrapper that retries a failed save three times (3.5 s of sleeps) into the same
            # file object, after whatever the failed attempt had written: a retry that succeeded would leave a
            # corrupt checkpoint behind a clean rename.
            torch.serialization.save(obj, f)
    except OSError as e:
        raise CheckpointError(f"cannot save checkpoint {path}: {e.strerror or e}") from e
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot save checkpoint {path}: the object cannot be pickled "
                              f"({_first_sentence(e)})") from e
    except RuntimeError as e:
        # torch's zip writer turns a failed write (a full disk) into "[enforce fail ...] unexpected pos": the
        # OSError it swallowed is the exception's context, and says what went wrong.
        reason = e.__context__.strerror if isinstance(e.__context__, OSError) else None
        raise CheckpointError(f"cannot save checkpoint {path}: {reason or _first_sentence(e)}") from e
    _fsync_directory(path.parent)


def _check_file(path: Path) -> None:
    """Turn a missing, non-regular, unreadable or empty file into a one-line CheckpointError before torch sees it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        hint = weights_hint(path)
        raise CheckpointError(f"checkpoint not found: {path}" + (f" ({hint})" if hint else "")) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise CheckpointError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if empty:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): the file is empty")


def _legacy_globals(path: Path) -> list[str]:
    """Globals named by a pre-zip checkpoint's pickles (magic, protocol, sys info, object), scanned without running."""
    with open(path, "rb") as f:
        data = f.read(1)
        if data != b"\x80":  # legacy files open with a pickle PROTO opcode; anything else is not one
            detail = "an incomplete zip archive" if data == b"P" else "neither a zip archive nor a pickle"
            raise _damaged(path, ValueError(detail))
        data += f.read()
    stream, names = io.BytesIO(data), []  # in memory: a corrupt length field must not make read() allocate gigabytes
    try:
        for _ in range(4):
            names += [arg.replace(" ", ".") for op, arg, _ in pickletools.genops(stream) if op.name == "GLOBAL"]
    except _DAMAGED as e:
        raise _damaged(path, e) from e
    return names


def _admit_all(path: Path, names: Sequence[str], allowed: Sequence[str], renames: Mapping[str, str],
               *, strict: bool) -> list[Any]:
    """safe_globals entries for every admitted name; with `strict`, any name not admitted refuses the file."""
    entries: list[Any] = []
    refused: list[str] = []
    missing: list[str] = []
    for name in sorted(set(names)):
        try:
            entries += _admit(name, allowed, renames)
        except ImportError as e:
            missing.append(f"{name} ({_first_sentence(e)})")
        except LookupError:
            refused.append(name)
    if strict and refused:
        raise _refused(path, refused)
    if strict and missing:
        raise CheckpointError(f"{path} needs {_listing(missing)}, which cannot be imported here "
                              "(written by another version of the code?)")
    return entries


def _admit(name: str, allowed: Sequence[str], renames: Mapping[str, str]) -> list[Any]:
    """Entries under which the loader finds `name`; LookupError if not allow-listed, ImportError if not installed."""
    target = next((new + name[len(old):] for old, new in renames.items() if name.startswith(old)), name)
    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise LookupError(name)
    if {name.split(".")[0], parts[0]} & _FORBIDDEN_MODULES:
        raise LookupError(name)
    if target in allowed:
        return [(_import(target), name)]
    if not any(p.endswith(".") and target.startswith(p) for p in allowed):
        raise LookupError(name)
    cls = _import(target)
    # Only a layer class defined right there: not a function, nor something the module merely imported.
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and f"{cls.__module__}.{cls.__qualname__}" == target):
        raise LookupError(name)
    return [(_uncallable(cls), name), (cls, _BUILD_ONLY + name)]


def _import(target: str) -> Any:
    """The object a dotted name refers to, importing its module (callers have already allow-listed it)."""
    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except AttributeError:
        raise ImportError(f"{module} has no {attr}") from None


def _uncallable(cls: type) -> type:
    """A stand-in for `cls` that the loader can allocate (NEWOBJ) but whose call (REDUCE) never runs cls.__init__."""

    def __new__(stand_in: type, *args: Any) -> Any:
        # An instance of cls, not of the stand-in, so type.__call__ skips __init__; pickled modules carry no args.
        return cls.__new__(cls)

    return type(cls.__name__, (), {"__new__": __new__, "__module__": __name__})


def _torch_load(path: Path, map_location: Any, *, weights_only: bool, legacy: bool = False) -> Any:
    """torch.load with its many failure types turned into one-line CheckpointErrors."""
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if not weights_only:
            raise _damaged(path, e) from e
        needed = re.search(r"GLOBAL (\S+)", str(e))
        if needed:
            raise _refused(path, [needed.group(1)]) from e
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        detail = f" ({_first_sentence(reason.group(1))})" if reason else ""
        if legacy:  # torch < 1.6 pickled modules with their source code, which no weights-only load accepts
            raise CheckpointError(f"{path} is a legacy (torch < 1.6) checkpoint the weights-only loader cannot read"
                                  f"{detail}; re-save it with a current torch, or {TRUST_HINT}") from e
        raise CheckpointError(f"{path} was refused by the weights-only loader{detail}; {TRUST_HINT}") from e
    except ImportError as e:  # a full pickle imports whatever the file names
        raise CheckpointError(f"{path} refers to code that cannot be imported here ({_first_sentence(e)})") from e
    except _DAMAGED as e:
        raise _damaged(path, e) from e


def _refused(path: Path, names: Sequence[str]) -> CheckpointError:
    return CheckpointError(f"{path} needs {_listing(names)}, which the weights-only loader does not allow; "
                           f"{TRUST_HINT}")


def _damaged(path: Path, e: BaseException) -> CheckpointError:
    # A KeyError or IndexError from the pickle machine says only "101"; its type is the useful part.
    detail = f"{type(e).__name__} {e}" if isinstance(e, LookupError) else _first_sentence(e)
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {detail}")


def _listing(names: Sequence[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself survive a power cut, where the platform allows it."""
    if os.name != "posix":  # Windows cannot open a directory
        return
    # Best effort: the data is already synced and in place; some filesystems (network mounts) refuse a directory fsync.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def find_last_checkpoint(resume: Union[bool, str], project: PathLike) -> Path:
    """The last.pt that --resume means: the one given (or its run folder's), or the newest under `project`."""
    if isinstance(resume, str) and resume not in ("", "True"):
        path = Path(resume)
        path = path / "weights" / "last.pt" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"--resume checkpoint not found: {path}")
        return path
    candidates = list(Path(project).glob("**/weights/last.pt"))
    if not candidates:
        raise UserError(f"--resume: no last.pt found under {project}; pass the checkpoint or run folder")
    return max(candidates, key=lambda p: p.stat().st_mtime)
