"""Teacher outputs computed once per image folder and kept on disk, so training never runs the teacher.

A store is a folder holding `values.npy` (count, dim), one row per image, and `index.json`, which names the teacher
that made the rows and the image key of each row (its path relative to the image folder root, with forward slashes).
Training memory-maps the rows, so epochs run at student speed and a 100k x 512 store never sits in RAM.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from tqdm import tqdm

from yolodistill.checkpoint import _fsync_directory  # one copy of the platform caveats
from yolodistill.errors import UserError

__all__ = ["STORE_FORMAT", "TeacherStore", "describe_teacher", "write_store"]

PathLike = Union[str, os.PathLike]

STORE_FORMAT = 1
KINDS = ("embedding", "logits")
DTYPES = ("float32", "float16")
_REBUILD = "rebuild it with `yolodistill classify embed`"


def write_store(out_dir: PathLike, keys: Sequence[str], batches: Iterable[torch.Tensor], *, teacher: dict, kind: str,
                source: PathLike | None = None, exist_ok: bool = False, dtype: str = "float32",
                progress: bool = True) -> Path:
    """Write (b, D) `batches`, in the order of `keys`, as a store at `out_dir`; it appears there only once complete.

    `source`: the folder the keys are relative to; training folders under it find their rows by prefix.
    """
    out_dir = Path(out_dir)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    keys = list(keys)
    if not keys:
        raise ValueError("a store needs at least one key")
    dups = [k for k, n in Counter(keys).items() if n > 1]
    if dups:
        raise UserError(f"image key {dups[0]!r} appears more than once; each image needs exactly one row "
                        f"in store {out_dir}")
    teacher = json.loads(json.dumps(teacher))  # fails now, not after the teacher has run over every image
    # Checked before any teacher work: finding this out after an hour of embedding would waste the hour.
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot write store {out_dir}: it exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not exist_ok:
        raise UserError(f"store folder {out_dir} already exists and is not empty; remove it or allow overwriting")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and on the same filesystem, so the final rename is atomic and no reader mistakes it for a store.
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        dim = _write_values(tmp / "values.npy", keys, batches, dtype, progress, out_dir)
        index = {"format": STORE_FORMAT, "teacher": teacher, "kind": kind, "dim": dim, "count": len(keys),
                 "dtype": dtype, "source": str(Path(source).resolve()) if source is not None else None, "keys": keys}
        with open(tmp / "index.json", "x", encoding="utf-8") as f:
            json.dump(index, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:  # an interrupt too: no half-written folder is left beside the store
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(out_dir.parent)
    return out_dir


def _write_values(path: Path, keys: Sequence[str], batches: Iterable[torch.Tensor], dtype: str, progress: bool,
                  out_dir: Path) -> int:
    """Fill `path` with (len(keys), D) rows from `batches`, written straight into the map; returns D."""
    values = None
    n = 0
    with tqdm(total=len(keys), unit="img", desc=f"store {out_dir.name}", disable=not progress) as pbar:
        for batch in batches:
            batch = torch.as_tensor(batch)
            if batch.ndim != 2:
                raise ValueError(f"store batches must be (b, D), got shape {tuple(batch.shape)}")
            if values is None:  # D is known only once the teacher has produced its first batch
                values = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(keys), batch.shape[1]))
            if batch.shape[1] != values.shape[1]:
                raise ValueError(f"store batch has {batch.shape[1]} columns, earlier batches had {values.shape[1]}")
            end = n + batch.shape[0]
            if end > len(keys):
                raise ValueError(f"batches yielded more than the {len(keys)} rows that keys name")
            # Checked after the cast: float16 turns logits beyond +-65504 into inf, which would poison training.
            with np.errstate(over="ignore"):  # reported below as an error, not as a warning
                values[n:end] = batch.detach().to("cpu", torch.float32).numpy()
            finite = np.isfinite(values[n:end]).all(axis=1)
            if not finite.all():
                bad = keys[n + int(np.argmin(finite))]
                raise UserError(f"teacher output for {bad!r} is not finite as {dtype}"
                                + ("; use float32" if dtype == "float16" else ""))
            n = end
            pbar.update(batch.shape[0])
    if n != len(keys):
        raise ValueError(f"batches yielded {n} rows but keys name {len(keys)} images")
    dim = int(values.shape[1])
    values.flush()
    del values  # unmapped before the rename, so nothing still writes into the file
    return dim


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished `tmp` to `out_dir`; an old store there is removed only once the new one is in place."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.old")
    os.replace(out_dir, old)  # a folder cannot be renamed over a non-empty one, so the old one steps aside first
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def describe_teacher(d: dict) -> str:
    """Short name of a teacher from its store entry: 'open_clip ViT-B-32 (model.safetensors)'."""
    name = " ".join(str(d[k]) for k in ("type", "model") if d.get(k)) or "an unnamed teacher"
    return f"{name} ({d['weights']})" if d.get("weights") else name


class TeacherStore:
    """Rows of a store, read from a memory map that each process opens for itself on first access."""

    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = path
        self._index = index
        self._keys = tuple(index["keys"])
        self._row_of = {k: i for i, k in enumerate(self._keys)}
        self._values: np.ndarray | None = None

    @classmethod
    def open(cls, path: PathLike, *, teacher: dict | None = None, dim: int | None = None,
             kind: str | None = None) -> TeacherStore:
        """Open the store at `path`, refusing one that is damaged or built other than `teacher`, `dim`, `kind` ask."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"no teacher store at {path}: build it with `yolodistill classify embed`")
        store = cls(path, _read_index(path))
        store._check_built_as(teacher, dim, kind)
        store._map()  # a truncated values.npy is refused now, not in the middle of an epoch
        store._values = None
        return store

    @property
    def teacher(self) -> dict:
        return self._index["teacher"]

    @property
    def kind(self) -> str:
        return self._index["kind"]

    @property
    def dim(self) -> int:
        return self._index["dim"]

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row_of

    @property
    def source(self) -> str | None:
        """Absolute path of the folder the keys are relative to (None if not recorded)."""
        return self._index.get("source")

    def prefix_of(self, folder: PathLike) -> str:
        """Key prefix of the images of `folder`: "" for the source folder itself, "sub/" for a subfolder."""
        if self.source is None:
            return ""
        folder, source = Path(folder).resolve(), Path(self.source)
        if folder == source:
            return ""
        try:
            return folder.relative_to(source).as_posix() + "/"
        except ValueError:
            raise UserError(f"{folder} is not inside {source}, the folder teacher store {self.path} was built "
                            f"from: {_REBUILD}") from None

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys among `keys` that have no row, in their given order."""
        return [k for k in keys if k not in self._row_of]

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """Rows for `keys` as (len(keys), D) float32."""
        return self.take(torch.tensor(self.rows_of(keys), dtype=torch.int64))

    def rows_of(self, keys: Sequence[str]) -> list[int]:
        """Row numbers of `keys`, found once when a dataset is built (a missing key fails there, not mid-epoch)."""
        try:
            return [self._row_of[k] for k in keys]
        except KeyError as e:
            raise UserError(f"image {e.args[0]!r} has no row in teacher store {self.path} (the image folder changed "
                            f"after embedding?): {_REBUILD}") from None

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows (B,) int64 -> (B, D) float32: one read of the memory map per batch."""
        return torch.from_numpy(np.asarray(self._map()[rows.cpu().numpy()], dtype=np.float32)).reshape(-1, self.dim)

    def row(self, i: int) -> torch.Tensor:
        """Row `i` as (D,) float32."""
        return torch.from_numpy(np.array(self._map()[i], dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:
        # A memmap pickles as a full in-memory copy; each DataLoader worker maps the file itself instead.
        return {**self.__dict__, "_values": None}

    def _map(self) -> np.ndarray:
        if self._values is None:
            file = self.path / "values.npy"
            try:
                values = np.load(file, mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:  # missing, truncated (mmap longer than file), or not .npy
                raise UserError(f"teacher store {file} is unreadable ({e}): {_REBUILD}") from e
            want = (len(self._keys), self.dim)
            if values.shape != want or values.dtype != np.dtype(self._index["dtype"]):
                raise UserError(f"teacher store {file} holds {values.dtype} {values.shape}, but its index says "
                                f"{self._index['dtype']} {want}: {_REBUILD}")
            self._values = values
        return self._values

    def _check_built_as(self, teacher: dict | None, dim: int | None, kind: str | None) -> None:
        """UserError naming both sides when the caller expects a store built another way."""
        if teacher is not None:
            teacher = json.loads(json.dumps(teacher))  # tuples become lists, as they are in index.json
        asked = {"teacher": teacher, "kind": kind, "dim": dim}
        fields = [f for f, v in asked.items() if v is not None]
        if all(asked[f] == self._index[f] for f in fields):
            return
        have = _describe_build({f: self._index[f] for f in fields})
        want = _describe_build({f: asked[f] for f in fields})
        if have == want:  # teachers differing only in fields the short name leaves out, e.g. the weights' size
            have, want = json.dumps(self.teacher, sort_keys=True), json.dumps(teacher, sort_keys=True)
        raise UserError(f"store {self.path} was built by {have}, not by {want}: {_REBUILD}")


def _describe_build(fields: dict[str, Any]) -> str:
    """'open_clip ViT-B-32 (model.safetensors), embedding, dim 512', from whichever of the three are given."""
    parts = [describe_teacher(fields["teacher"])] if "teacher" in fields else []
    parts += [fields["kind"]] if "kind" in fields else []
    parts += [f"dim {fields['dim']}"] if "dim" in fields else []
    return ", ".join(parts)


def _read_index(path: Path) -> dict[str, Any]:
    """index.json of the store at `path`, checked field by field."""
    file = path / "index.json"
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is not a teacher store (no index.json; an interrupted build?): {_REBUILD}") from None
    except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"teacher store index {file} is unreadable or corrupt ({e}): {_REBUILD}") from e
    problem = _index_problem(index)
    if problem:
        raise UserError(f"teacher store index {file} is corrupt ({problem}): {_REBUILD}")
    return index


def _index_problem(index: Any) -> str | None:
    """What is wrong with a parsed index.json, or None."""
    if not isinstance(index, dict):
        return "not a JSON object"
    if index.get("format") != STORE_FORMAT:
        return f"format {index.get('format')!r}, this version reads format {STORE_FORMAT}"
    checks = {"teacher": isinstance(index.get("teacher"), dict), "kind": index.get("kind") in KINDS,
              "dtype": index.get("dtype") in DTYPES,
              "dim": type(index.get("dim")) is int and index["dim"] > 0,
              "keys": isinstance(index.get("keys"), list) and all(isinstance(k, str) for k in index["keys"])}
    bad = [f for f, ok in checks.items() if not ok]
    if bad:
        return f"bad or missing {', '.join(bad)}"
    if index.get("count") != len(index["keys"]):
        return f"count {index.get('count')!r} but {len(index['keys'])} keys"
    if len(set(index["keys"])) != len(index["keys"]):
        return "duplicate keys"
    return None

