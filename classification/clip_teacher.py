"""An OpenCLIP teacher and the linear head that turns its embeddings (or a student's) into class logits.

CLIP-to-CNN distillation (NVIDIA's clip-distillation): the CNN student learns to output the teacher's image
embedding, and at inference its embedding goes through the same head, so the head is a plain torch layer that works on
any (B, D) embedding. The head is either zero-shot (text prompts) or a linear probe fitted on labeled embeddings.

Weights come from local files only: nothing here may reach the network, this tool runs where there is none.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.errors import UserError, one_line
from .store import TeacherStore, describe_teacher

__all__ = ["ClipTeacher", "LinearHead", "fit_linear_probe", "load_clip", "load_head", "read_prompts", "save_head",
           "text_head"]

LOGGER = logging.getLogger("yolodistill")
PathLike = Union[str, os.PathLike]

_TEXT_CHUNK = 256  # prompts per text-encoder batch: a 1000-class prompt list in one go is a lot of activations
_HEAD_KEYS = ("kind", "classes", "weight", "bias", "scale", "teacher", "embed_dim")


class ClipTeacher:
    """A frozen OpenCLIP model giving L2-normalised image embeddings (B, D) and text embeddings (C, D)."""

    def __init__(self, model: nn.Module, preprocess: Any, tokenizer: Any, *, embed_dim: int, identity: dict):
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.embed_dim = int(embed_dim)
        self.identity = identity
        # exp of the learned temperature: the factor CLIP itself puts on cosine similarities before the softmax
        self.logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> unit-norm embeddings (B, D), float32 on the model's device."""
        if x.ndim != 4:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        return F.normalize(self.model.encode_image(x.to(self.device, torch.float32)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts (C,) -> unit-norm embeddings (C, D), float32 on the model's device."""
        if not prompts:
            raise ValueError("encode_text needs at least one prompt")
        chunks = [self.model.encode_text(self.tokenizer(list(prompts[i:i + _TEXT_CHUNK])).to(self.device)).float()
                  for i in range(0, len(prompts), _TEXT_CHUNK)]
        return F.normalize(torch.cat(chunks), dim=-1)


def load_clip(model_name: str, pretrained: str | None, *, config: str | None = None,
              device: str = "cpu") -> ClipTeacher:
    """An OpenCLIP teacher from a local weights file (None: random init), optionally from a model-config JSON."""
    import open_clip  # imported here: it is an optional dependency and takes seconds to import (timm)

    name = model_name.strip()
    if name.startswith(("hf-hub:", "local-dir:")):
        raise UserError(f"model name {name!r}: schema prefixes are not supported; pass a model name "
                        "(with --config for a custom one) and the weights file as pretrained")
    name = name.replace("/", "-")  # open_clip's own spelling: ViT-B/32 is ViT-B-32
    if config is not None:
        _register_config(open_clip, Path(config), name)
    if name not in open_clip.list_models():
        raise UserError(f"unknown OpenCLIP model {model_name!r}{_close_matches(name, open_clip.list_models())}")
    weights = _weights_file(open_clip, name, pretrained)
    model_cfg = open_clip.get_model_config(name)
    text_cfg = model_cfg.get("text_cfg", {})

    # Tokenizer first: it fails fastest. CLIP's BPE vocabulary ships with open_clip; an HF tokenizer would be fetched
    # from the hub, and open_clip's SigLIP fallback fetches a sentencepiece file over plain HTTP (fsspec).
    if "siglip" in name.lower() and not text_cfg.get("hf_tokenizer_name"):
        raise UserError(f"model {name}: open_clip downloads this model's SigLIP tokenizer, which cannot be done "
                        "offline; set text_cfg.hf_tokenizer_name to a tokenizer in the local Hugging Face cache")
    try:
        with _offline():
            tokenizer = open_clip.get_tokenizer(name)
    except (OSError, ImportError, ValueError, RuntimeError) as e:
        hf_name = text_cfg.get("hf_tokenizer_name", "")
        raise UserError(f"model {name}: cannot load its tokenizer {hf_name!r} offline (needs transformers and the "
                        f"tokenizer in the local Hugging Face cache): {one_line(e)}") from e

    try:
        with _offline():
            # A resolved path, never a bare name: open_clip looks `pretrained` up as a hub tag before as a file, so
            # a file called "openai" in the working directory would start a download. pretrained_text=False: an HF
            # text tower would otherwise fetch its own weights when no full checkpoint is given.
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(weights) if weights else None, pretrained_text=False, device=device)
    except Exception as e:  # the boundary to open_clip, torch and safetensors, which raise any type on a bad file
        source = f"weights {weights}" if weights else "random init"
        raise UserError(f"cannot build OpenCLIP model {name} ({source}): {one_line(e)}") from e
    if weights is None:
        LOGGER.warning(f"OpenCLIP model {name} is randomly initialised (no pretrained weights): for tests only")
    identity = {"type": "open_clip", "model": name, "weights": weights.name if weights else None,
                "bytes": weights.stat().st_size if weights else None}
    return ClipTeacher(model, preprocess, tokenizer, embed_dim=model_cfg["embed_dim"], identity=identity)


def _register_config(open_clip: Any, path: Path, name: str) -> None:
    """Validate an OpenCLIP model-config JSON and add it to open_clip's registry under `name`."""
    # open_clip registers a config under its file stem, rescans only *.json files and silently skips one without
    # embed_dim/vision_cfg/text_cfg; a broken file stays on its search path and breaks every later rescan. So check
    # everything here and only then hand it over.
    if not path.is_file():
        raise UserError(f"OpenCLIP model config not found: {path}")
    if path.suffix != ".json":
        raise UserError(f"OpenCLIP model config {path} must be a .json file (open_clip ignores other names)")
    if path.stem != name:
        raise UserError(f"OpenCLIP names a config after its file: {path} defines model {path.stem!r}, "
                        f"not {name!r}; pass model name {path.stem!r}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read OpenCLIP model config {path}: {one_line(e)}") from e
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise UserError(f"OpenCLIP model config {path} lacks {', '.join(missing)}")
    if not (isinstance(cfg["embed_dim"], int) and isinstance(cfg["vision_cfg"], dict)
            and isinstance(cfg["text_cfg"], dict)):
        raise UserError(f"OpenCLIP model config {path}: embed_dim must be an int, vision_cfg and text_cfg objects")
    try:
        open_clip.add_model_config(path.resolve())
    except (OSError, ValueError) as e:  # the rescan rereads every config ever added, not only this one
        raise UserError(f"cannot register OpenCLIP model config {path}: {one_line(e)}") from e


def _weights_file(open_clip: Any, name: str, pretrained: str | None) -> Path | None:
    """The resolved local weights file, or None for random init; a hub tag or missing file is a UserError."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        tag = pretrained in open_clip.list_pretrained_tags_by_model(name)
        what = f"{pretrained!r} is an open_clip hub tag, not a file" if tag else f"{pretrained} is not a file"
        raise UserError(f"OpenCLIP weights come from local files only and {what}; pass the path of a downloaded "
                        "weights file (e.g. open_clip_model.safetensors)")
    return path.resolve()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face hub offline mode for the duration, so a missing cache entry fails at once instead of fetching."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    # The env var alone does nothing once huggingface_hub is imported (open_clip imports it): it reads HF_HUB_OFFLINE
    # into a constant at import and mounts its offline adapter on sessions it caches, so set both and drop the cache.
    try:
        from huggingface_hub import constants as hub_constants
        from huggingface_hub.utils import reset_sessions
    except ImportError:
        hub_constants = reset_sessions = None
    was = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
        reset_sessions()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = was
            reset_sessions()


def read_prompts(path: PathLike, classes: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(class_names, prompts) from a file of one `name: description` or `description` line per class.

    With `classes` (the labeled folder's names, sorted): plain lines map to them in order, named lines are matched by
    name and reordered to `classes` order.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {path}: {one_line(e)}") from e
    entries = []  # (line number, name or None, description)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, description = line.partition(": ")
        name, description = (name.strip(), description.strip()) if sep else (None, line)
        if name == "" or description == "":
            raise UserError(f"prompts file {path} line {number}: expected 'name: description', got {line!r}")
        entries.append((number, name, description))
    if not entries:
        raise UserError(f"prompts file {path} has no prompts (one class description per line)")
    named = [e for e in entries if e[1] is not None]
    if named and len(named) != len(entries):
        plain = next(e[0] for e in entries if e[1] is None)
        raise UserError(f"prompts file {path} mixes 'name: description' lines with plain ones (line {plain}); "
                        "use one form throughout")
    names = [e[1] if named else e[2] for e in entries]
    prompts = [e[2] for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"prompts file {path} names a class more than once: {', '.join(duplicates)}")
    if classes is None:
        return names, prompts
    classes = list(classes)
    if len(entries) != len(classes):
        raise UserError(f"prompts file {path} has {len(entries)} classes, the labeled data has {len(classes)}: "
                        f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}")
    if not named:  # plain lines follow the labeled folders' sorted order
        return classes, prompts
    unknown, missing = [n for n in names if n not in classes], [c for c in classes if c not in names]
    if unknown or missing:
        raise UserError(f"prompts file {path} names classes the labeled data lacks ({', '.join(unknown)}) "
                        f"and misses ({', '.join(missing)})")
    by_name = dict(zip(names, prompts))
    return classes, [by_name[c] for c in classes]


class LinearHead(nn.Module):
    """Logits (B, C) = scale * normalize(e) @ weight.T + bias for any embedding e (B, D), teacher's or student's."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, scale: float, classes: Sequence[str], *,
                 kind: str = "probe"):
        super().__init__()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(classes) != weight.shape[0]:
            raise ValueError(f"head shapes disagree: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                             f"{len(classes)} classes")
        # Frozen parameters: they travel in the student's state_dict and ONNX graph but are never trained with it.
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.classes = list(classes)
        self.kind = kind

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D), any norm -> logits (B, C)."""
        return self.scale * F.linear(F.normalize(e.to(self.weight.dtype), dim=-1), self.weight) + self.bias


def text_head(teacher: ClipTeacher, prompts: Sequence[str], classes: Sequence[str]) -> LinearHead:
    """CLIP's zero-shot classifier: weight = unit text embeddings (C, D), bias 0, scale = the teacher's logit scale."""
    if len(prompts) != len(classes):
        raise ValueError(f"{len(prompts)} prompts for {len(classes)} classes")
    weight = teacher.encode_text(list(prompts))
    return LinearHead(weight, torch.zeros(len(classes), device=weight.device), teacher.logit_scale, classes,
                      kind="text")


def fit_linear_probe(embeddings: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *,
                     weight_decay: float = 1e-3, max_iter: int = 200) -> LinearHead:
    """Multinomial logistic regression on unit embeddings (N, D) with labels (N,) in [0, C); scale 1."""
    # torch, not scikit-learn: the probe has to be a torch layer that ships with the student for predict and ONNX
    # export, and it is a small convex fit: full-batch L-BFGS from zero, so the same data gives the same head.
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],) or embeddings.shape[0] == 0:
        raise ValueError(f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    num_classes = len(classes)
    y = labels.to(embeddings.device, torch.long)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    # Out of inference mode: embeddings made under it cannot be saved for backward, their normalised copy can.
    with torch.inference_mode(False), torch.enable_grad():
        x = F.normalize(embeddings.detach().float().clone(), dim=-1)
        weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            # the bias is not penalised, as in scikit-learn: it only absorbs class frequencies
            loss = F.cross_entropy(F.linear(x, weight, bias), y) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return LinearHead(weight.detach(), bias.detach(), 1.0, classes, kind="probe")


def save_head(head: LinearHead, path: PathLike, *, teacher: dict) -> None:
    """Write a head as plain tensors, str lists and dicts (weights-only loadable); `teacher`: ClipTeacher.identity."""
    save_checkpoint_atomic({"kind": head.kind, "classes": list(head.classes), "weight": head.weight.detach().cpu(),
                            "bias": head.bias.detach().cpu(), "scale": float(head.scale), "teacher": dict(teacher),
                            "embed_dim": int(head.weight.shape[1])}, path)


def load_head(path: PathLike) -> tuple[LinearHead, dict]:
    """(head on CPU, teacher identity) from a file written by save_head."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"head file not found: {path}")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not a readable head file: {one_line(e)}") from e
    if not isinstance(obj, dict) or any(k not in obj for k in _HEAD_KEYS) or not isinstance(obj["teacher"], dict):
        raise UserError(f"{path} is not a head file (expected keys {', '.join(_HEAD_KEYS)})")
    try:
        head = LinearHead(obj["weight"], obj["bias"], obj["scale"], obj["classes"], kind=obj["kind"])
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is a damaged head file: {one_line(e)}") from e
    return head, obj["teacher"]


def load_head_for_store(path: PathLike, store: TeacherStore, store_name: str) -> LinearHead:
    """load_head(path), checked against the embedding store (`store_name` in messages: 'store DIR') whose
    embeddings it will turn into class logits: the same teacher made both, at the same width."""
    head, head_teacher = load_head(path)
    if head_teacher != store.teacher:
        raise UserError(f"head {path} was made with {describe_teacher(head_teacher)}, the {store_name} with "
                        f"{describe_teacher(store.teacher)}: use one teacher for both")
    # The same teacher name can still mean two widths (a random-init model config edited between `embed` and
    # `text-embed`); unchecked, a run trained a student that predict refuses, or failed with a shape traceback.
    if head.weight.shape[1] != store.dim:
        raise UserError(f"head {path} takes {head.weight.shape[1]}-d embeddings, the {store_name} holds "
                        f"{store.dim}-d ones: make both with one teacher")
    return head


def _close_matches(name: str, choices: Sequence[str]) -> str:
    """'; did you mean a, b?' with up to 5 case-insensitive near misses, or a pointer to the full list."""
    lower = {c.lower(): c for c in choices}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.6)]
    return f"; did you mean {', '.join(close)}?" if close else "; open_clip.list_models() lists the known names"
