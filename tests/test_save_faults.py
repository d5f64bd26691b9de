"""A checkpoint write that fails during training (disk full, permission denied) ends the run with one line that
names the file and the reason; the previous checkpoint stays intact and no temp file is left behind."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest

from yolodistill import checkpoint
from yolodistill import yolo_backend as yb  # imported here, not under capsys: yolov5's log handler keeps its stream
from yolodistill.classification.models import read_checkpoint
from yolodistill.cli import main
from yolodistill.run_logger import read_results

from .conftest import CLASSIFY_IMGSZ, IMGSZ, one_torch_thread

# name: (error, what the user reads, fails at creating the temp file rather than part-way through writing it)
FAULTS = {
    "disk_full": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device", False),
    "permission_denied": (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "Permission denied", True),
}


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are in, as on a disk that fills up."""

    def __init__(self, f, room: int = 4096):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def fail_nth_write(monkeypatch, name: str, nth: int, fault: str) -> None:
    """Make the nth checkpoint write of `name` (last.pt, best.pt) fail inside save_checkpoint_atomic."""
    error, _, at_open = FAULTS[fault]
    count = 0

    def fake_open(file, mode="r", *args, **kwargs):
        nonlocal count
        if "x" in mode and Path(file).name.startswith(f".{name}."):  # the temp file beside `name`
            count += 1
            if count == nth:
                if at_open:
                    raise error
                return FullDisk(builtins.open(file, mode, *args, **kwargs))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


def _assert_one_line_error(err: str, command: str, path: Path, reason: str) -> None:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [f"yolodistill {command}: error: cannot save checkpoint {path}: {reason}"], err
    assert "Traceback" not in err


def _no_temp_files(weights: Path) -> None:
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_detection_save_fault(fault, tiny_data, tmp_path, monkeypatch, capsys):
    fail_nth_write(monkeypatch, "last.pt", 2, fault)  # epoch 1's
    rc = main(["train", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--imgsz", str(IMGSZ), "--epochs", "3",
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noplots", "--noautoanchor",
               "--project", str(tmp_path), "--name", "det"])
    weights = tmp_path / "det" / "weights"
    assert rc == 1
    _assert_one_line_error(capsys.readouterr().err, "train", weights / "last.pt", FAULTS[fault][1])
    last = yb.load_yolov5_checkpoint(weights / "last.pt")
    assert last["epoch"] == 0 and last["optimizer"] is not None  # epoch 0's, still resumable
    _no_temp_files(weights)


@pytest.mark.parametrize("fault", FAULTS)
def test_classify_save_fault_then_resume(fault, shapes_data, tmp_path, monkeypatch, capsys):
    fail_nth_write(monkeypatch, "last.pt", 2, fault)  # epoch 1's
    with one_torch_thread():
        rc = main(["classify", "train", "--data", str(shapes_data), "--model", "cnn_small", "--imgsz",
                   str(CLASSIFY_IMGSZ), "--epochs", "3", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                   "--project", str(tmp_path), "--name", "cls"])
    save_dir = tmp_path / "cls"
    weights = save_dir / "weights"
    assert rc == 1
    _assert_one_line_error(capsys.readouterr().err, "classify", weights / "last.pt", FAULTS[fault][1])
    last = read_checkpoint(weights / "last.pt")
    assert last["epoch"] == 0 and "resume" in last
    _no_temp_files(weights)

    # Space freed: --resume redoes epoch 1 (its results.csv row too) and finishes.
    monkeypatch.undo()
    with one_torch_thread():
        assert main(["classify", "train", "--resume", str(save_dir)]) == 0
    assert [int(r["epoch"]) for r in read_results(save_dir / "results.csv")] == [0, 1, 2]
    last = read_checkpoint(weights / "last.pt")
    assert last["epoch"] == 2 and "resume" not in last
    _no_temp_files(weights)


def test_a_failed_write_is_not_retried_into_the_same_file(tmp_path, monkeypatch):
    """yolov5 imports ultralytics, which wraps torch.save in retries into the same file object (appending a whole
    checkpoint after the failed attempt's bytes); our saves go around that wrapper: one attempt, one clear error."""
    import torch

    attempts = []

    class CountingFullDisk(FullDisk):
        def write(self, data) -> int:
            try:
                return super().write(data)
            except OSError:
                attempts.append(len(data))
                raise

    monkeypatch.setattr(checkpoint, "open", lambda file, mode="r", *a, **kw: CountingFullDisk(
        builtins.open(file, mode, *a, **kw)) if "x" in mode else builtins.open(file, mode, *a, **kw),
                        raising=False)
    obj = {"w": torch.zeros(1000)}
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        checkpoint.save_checkpoint_atomic(obj, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    once = len(attempts)  # the failed writes of one save (torch's zip writer tries again as it closes)
    attempts.clear()
    with pytest.raises((RuntimeError, OSError)), CountingFullDisk(builtins.open(tmp_path / "plain.pt", "xb")) as f:
        torch.serialization.save(obj, f)
    assert once == len(attempts) > 0
