"""Checkpoints load weights-only (a refused file runs nothing) and save atomically (a failed save keeps the old one)."""

from __future__ import annotations

import errno
import importlib
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from yolodistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_atomic

YOLOV5_PREFIXES = ("yolov5.models.", "models.")


class Harmless:
    """A class no allow-list names: loadable only with trust=True."""

    def __init__(self, value: int):
        self.value = value


class CreatesFileOnInit(nn.Module):
    """A layer whose __init__ has a side effect, to show that an admitted class is never called by a pickle."""

    def __init__(self, marker: str):
        super().__init__()
        Path(marker).touch()


class ShellPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class ExecPayload(ShellPayload):
    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class PathTouchPayload(ShellPayload):
    def __reduce__(self):
        return Path.touch, (self.marker,)  # pickled as builtins.getattr(pathlib.Path, 'touch')


class InitCallPayload(ShellPayload):
    def __reduce__(self):
        return CreatesFileOnInit, (str(self.marker),)


def yolov5_cfg(name: str = "yolov5n.yaml") -> Path:
    import yolov5

    return Path(yolov5.__file__).parent / "models" / name


def yolov5_checkpoint(model: nn.Module) -> dict:
    """The keys yolov5's train.py writes, with the FP16 model it stores."""
    return {"model": model.half(), "ema": None, "epoch": 3, "best_fitness": np.float64(0.25),
            "opt": {"imgsz": 64, "save_dir": Path("runs/train/exp"), "hyp": {"lr0": 0.01}}, "optimizer": None,
            "date": "2024-01-01T00:00:00"}


@pytest.fixture(scope="module")
def yolo_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    """A yolov5n (nc=3) checkpoint file and the state_dict it holds."""
    from yolov5.models.yolo import Model

    model = Model(str(yolov5_cfg()), nc=3)
    path = tmp_path_factory.mktemp("ckpt") / "yolov5n.pt"
    ckpt = yolov5_checkpoint(model)
    torch.save(ckpt, path)
    return path, {k: v.clone() for k, v in ckpt["model"].state_dict().items()}


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


# ---------------------------------------------------------------------------------------------- loading

def test_yolov5_checkpoint_round_trip(yolo_ckpt):
    from yolov5.models.yolo import Detect, DetectionModel

    path, state = yolo_ckpt
    ckpt = load_checkpoint(path, allowed_prefixes=YOLOV5_PREFIXES)
    model = ckpt["model"]
    assert isinstance(model, DetectionModel) and isinstance(model.model[-1], Detect)
    assert ckpt["epoch"] == 3 and ckpt["best_fitness"] == 0.25 and isinstance(ckpt["best_fitness"], np.float64)
    assert ckpt["opt"]["save_dir"] == Path("runs/train/exp")
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    pred, _ = model.float().eval()(torch.zeros(1, 3, 64, 64))
    assert pred.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 5 + 3)


def test_yolov5_classes_refused_without_their_prefix(yolo_ckpt):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(yolo_ckpt[0])
    assert_one_line(err, str(yolo_ckpt[0]), "yolov5.models.common.Bottleneck", "more", "--trust-checkpoint")


def test_legacy_non_zip_checkpoint_loads(tmp_path):
    """torch < 1.6 files are a pickle stream, not a zip: their globals are scanned without torch's listing API."""
    import argparse

    path = tmp_path / "legacy.pt"
    ckpt = {"w": torch.randn(3), "best_fitness": np.float64(0.5), "opt": argparse.Namespace(imgsz=64)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], ckpt["w"]) and loaded["best_fitness"] == 0.5 and loaded["opt"].imgsz == 64


def test_legacy_module_checkpoint_refused_clearly(yolo_ckpt, tmp_path):
    """torch < 1.6 pickled each module class with its source code, which no weights-only load can read."""
    path = tmp_path / "legacy.pt"
    torch.save(torch.load(yolo_ckpt[0], weights_only=False), path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, allowed_prefixes=YOLOV5_PREFIXES)
    assert_one_line(err, str(path), "legacy", "--trust-checkpoint")
    ckpt = load_checkpoint(path, trust=True)
    assert all(torch.equal(ckpt["model"].state_dict()[k], v) for k, v in yolo_ckpt[1].items())


def test_repo_checkpoint_aliased_to_pip_classes(tmp_path):
    """ultralytics-repo checkpoints name `models.yolo.*`; aliased, they load as the pip package's classes."""
    from yolov5.models.yolo import Detect, DetectionModel

    repo_yolo = importlib.import_module("models.yolo")  # the same file under the repo's module name
    assert repo_yolo.DetectionModel is not DetectionModel
    path = tmp_path / "repo.pt"
    torch.save(yolov5_checkpoint(repo_yolo.Model(str(yolov5_cfg()), nc=2)), path)
    assert "models.yolo.DetectionModel" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    model = load_checkpoint(path, allowed_prefixes=("yolov5.models.",), aliases={"models.": "yolov5.models."})["model"]
    assert type(model) is DetectionModel and type(model.model[-1]) is Detect


def test_plain_tensor_dict(tmp_path):
    path = tmp_path / "tensors.pt"
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(4), "p": nn.Parameter(torch.ones(2))}
    torch.save(tensors, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("payload", [ShellPayload, ExecPayload, PathTouchPayload])
@pytest.mark.parametrize("allowed_prefixes", [(), ("os.", "posix.", "builtins.", "pathlib.", "subprocess.")])
def test_malicious_pickle_refused_and_never_run(tmp_path, payload, allowed_prefixes):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": payload(marker)}, path)
    for legacy in (False, True):
        if legacy:
            torch.save({"model": payload(marker)}, path, _use_new_zipfile_serialization=False)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, allowed_prefixes=allowed_prefixes)
        assert_one_line(err, str(path), "--trust-checkpoint")
        assert not marker.exists()


def test_admitted_class_is_rebuilt_never_called(tmp_path):
    """Even a class under an allowed prefix cannot be called by a pickle: its __init__ never runs."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": InitCallPayload(marker)}, path)
    assert f"{__name__}.CreatesFileOnInit" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    loaded = load_checkpoint(path, allowed_prefixes=(f"{__name__}.",))
    assert type(loaded["model"]) is CreatesFileOnInit
    assert not marker.exists()


def test_prefix_admits_only_layer_classes_defined_there(tmp_path):
    """A prefix admits nn.Module subclasses, not plain classes or functions of that module."""
    path = tmp_path / "harmless.pt"
    torch.save({"h": Harmless(3)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, allowed_prefixes=(f"{__name__}.",))
    assert_one_line(err, f"{__name__}.Harmless", "--trust-checkpoint")


def test_trust_loads_unlisted_class(tmp_path):
    path = tmp_path / "harmless.pt"
    torch.save({"h": Harmless(3)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["h"].value == 3


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert_one_line(err, f"not found: {tmp_path / 'nope.pt'}")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert_one_line(err, str(tmp_path), "directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.pt"
    torch.save({"a": torch.ones(1)}, path)
    path.chmod(0)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert_one_line(err, str(path), "ermission")


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint " * 4, b"\x80\x02junk"])
def test_empty_or_garbage_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, trust=trust)
        assert_one_line(err, str(path), "is not a readable PyTorch checkpoint (truncated or corrupt?)")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoint(yolo_ckpt, tmp_path, legacy):
    source = tmp_path / "full.pt"
    if legacy:
        torch.save({"w": torch.randn(1000)}, source, _use_new_zipfile_serialization=False)
    else:
        source = yolo_ckpt[0]
    data = source.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, allowed_prefixes=YOLOV5_PREFIXES)
    assert_one_line(err, str(path), "is not a readable PyTorch checkpoint (truncated or corrupt?)")


# ---------------------------------------------------------------------------------------------- saving

def test_atomic_save_replaces_existing(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"epoch": 1}, path)
    save_checkpoint_atomic({"epoch": 2, "w": torch.ones(2)}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.serialization, "save", disk_full)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint_atomic({"epoch": 2}, path)
    assert_one_line(err, str(path), os.strerror(errno.ENOSPC))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_unpicklable_object_keeps_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        save_checkpoint_atomic({"epoch": 2, "fn": lambda x: x}, path)
    assert_one_line(err, str(path), "cannot be pickled")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_save_into_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "last.pt"
    with pytest.raises(CheckpointError) as err:
        save_checkpoint_atomic({"epoch": 1}, path)
    assert_one_line(err, str(path))
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes whatever a directory's mode")
def test_save_into_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError) as err:
            save_checkpoint_atomic({"epoch": 1}, folder / "last.pt")
        assert_one_line(err, str(folder / "last.pt"), "ermission")
    finally:
        folder.chmod(0o700)


def test_a_resumed_run_keeps_its_results_csv_column_order(tmp_path):
    """A run started by a version that ordered the columns otherwise goes on in its file's order."""
    from yolodistill.run_logger import RunLogger, read_results

    old = RunLogger(tmp_path, ["train/a", "train/b", "metrics/m"], tensorboard=False)
    old.log(0, {"train/a": 1.0, "train/b": 2.0, "metrics/m": 3.0})
    resumed = RunLogger(tmp_path, ["train/a", "metrics/m", "train/b"], tensorboard=False)
    resumed.log(1, {"train/a": 4.0, "train/b": 5.0, "metrics/m": 6.0})
    assert [(r["train/a"], r["train/b"], r["metrics/m"]) for r in read_results(tmp_path / "results.csv")] == \
        [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)]
