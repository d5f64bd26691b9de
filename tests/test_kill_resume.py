"""SIGKILL a real training process mid-epoch, in the middle of a checkpoint write, and before any checkpoint:
every checkpoint left behind loads, and `--resume` finishes the run with each epoch in results.csv once.

Checkpoint writes are paused in the run's process (_PausedRenames): atomic_file waits with its temp file written
and synced but not renamed, announced by "<temp file>.ready", until the marker is deleted (the test lets that write
go on) or the process is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from yolodistill import yolo_backend as yb  # imported here, not under capsys: yolov5's log handler keeps its stream
from yolodistill.classification.models import read_checkpoint
from yolodistill.classification.distill import KDTrainer
from yolodistill.classification.trainer import ClassifyOptions
from yolodistill.cli import main
from yolodistill.run_logger import read_results

from .conftest import (CLASSIFY_IMGSZ, IMGSZ, assert_same_training, initial_weights, make_shapes_dataset,
                       one_torch_thread)

TIMEOUT = 120.0  # seconds any one wait may take before the process is killed and the test fails
PAUSE = 120.0  # longest a paused checkpoint write waits for the test


# Each run is a fresh process forked from multiprocessing's fork server, which imported torch and yolov5 once:
# the same real training process that SIGKILL ends, without ~4 s of imports per run (nine runs here). The server
# never runs torch code, so no half-used thread pool is forked.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["yolodistill.cli", "yolodistill.detection.trainer",
                                   "yolodistill.classification.trainer"])


class _PausedRenames:
    """yolodistill.checkpoint's `os` in a paused run: before a temp file is renamed over a checkpoint (it is
    written and synced by then), create an empty "<temp file>.ready" marker and wait until the test deletes it
    or PAUSE seconds pass, so that the test can SIGKILL the process in the middle of a checkpoint write."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def replace(src, dst) -> None:
        marker = Path(src).with_name(Path(src).name + ".ready")
        marker.touch()
        deadline = time.monotonic() + PAUSE
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        marker.unlink(missing_ok=True)
        os.replace(src, dst)


def _run_cli(args: list[str], out: str, err: str, cwd: str, pause: bool) -> None:
    """The child: `yolodistill ARGS` with stdout/stderr in files, exiting with its return code."""
    if pause:
        from yolodistill import checkpoint

        checkpoint.os = _PausedRenames()  # this process is the run alone: nothing to put back
    with open(out, "w") as o, open(err, "w") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
    os.chdir(cwd)
    import torch

    from yolodistill.cli import main as cli_main

    torch.set_num_threads(1)
    rc = cli_main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


class Run:
    """One `yolodistill ...` process, its stdout/stderr in files; killed if a test leaves it running."""

    def __init__(self, args: list[str], logs: Path, *, pause: bool = False):
        n = len(list(logs.glob("*.err")))
        self.err = logs / f"run{n}.err"
        self.proc = FORKSERVER.Process(target=_run_cli, args=(args, str(logs / f"run{n}.out"), str(self.err),
                                                               str(logs), pause))
        self.proc.start()

    @property
    def returncode(self) -> Optional[int]:
        """The exit code, or minus the signal that ended it (as subprocess gives), or None while running."""
        return self.proc.exitcode

    def wait_for(self, what: str, condition: Callable[[], Optional[object]]):
        """Poll `condition` until it returns something truthy; fail (process killed) on exit or timeout."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.returncode is not None:
                pytest.fail(f"the run ended (rc {self.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"timed out after {TIMEOUT:.0f} s waiting for {what}:\n{self.tail()}")

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(timeout=TIMEOUT)

    def finish(self) -> int:
        self.proc.join(timeout=TIMEOUT)
        if self.returncode is None:
            self.kill()
            pytest.fail(f"timed out after {TIMEOUT:.0f} s waiting for the run to finish:\n{self.tail()}")
        return self.returncode

    def tail(self) -> str:
        return self.err.read_text()[-3000:]


@pytest.fixture
def runs(tmp_path):
    """Start Runs with runs(args, pause=...); any still running at the end are killed."""
    started: list[Run] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(args: list[str], *, pause: bool = False) -> Run:
        started.append(Run(args, logs, pause=pause))
        return started[-1]

    yield start
    for run in started:
        run.kill()


def _kill_in_write(run: Run, weights: Path, name: str, nth: int) -> Path:
    """Let checkpoint writes go on until the nth of `name`, SIGKILL the run there; the temp file it was writing."""
    seen = 0
    while True:
        marker = run.wait_for(f"write {seen + 1} of {name}",
                              lambda: next(iter(sorted(weights.glob(".*.tmp.ready"))), None) if weights.is_dir()
                              else None)
        if marker.name.startswith(f".{name}."):
            seen += 1
            if seen == nth:
                run.kill()
                assert run.returncode == -signal.SIGKILL
                tmp = marker.with_name(marker.name.removesuffix(".ready"))
                assert tmp.is_file() and tmp.stat().st_size > 0  # killed with the new checkpoint not yet in place
                marker.unlink()  # the test's own signal, not the run's: a later run's writes are counted afresh
                return tmp
        marker.unlink()  # the paused write goes on


def _kill_in_next_epoch(run: Run, save_dir: Path, epoch: int, progress: str) -> None:
    """SIGKILL the run in the epoch after `epoch`: once last.pt has been replaced since the run started, results.csv
    has `epoch`, and the progress bar (regex `progress`) shows the next epoch training."""
    last = save_dir / "weights" / "last.pt"
    before = _identity(last)

    def ready():
        try:
            rows = read_results(save_dir / "results.csv")
        except ValueError:  # caught in the middle of an append
            return None
        return rows and rows[-1]["epoch"] >= epoch and _identity(last) != before and \
            re.search(progress, run.err.read_text())

    run.wait_for(f"epoch {epoch + 1} after the checkpoint of epoch {epoch}", ready)
    run.kill()
    assert run.returncode == -signal.SIGKILL


def _identity(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _assert_readable(save_dir: Path, load: Callable[[Path], dict]) -> dict[str, dict]:
    """Every checkpoint loads, results.csv parses, and no half-written file is named like one a reader picks up."""
    weights = save_dir / "weights"
    ckpts = {p.name: load(p) for p in sorted(weights.glob("*.pt"))}
    for p in weights.iterdir():
        assert p.name in ckpts or (p.name.startswith(".") and ".pt." in p.name and not p.name.endswith(".pt")), p
    rows = read_results(save_dir / "results.csv")
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(len(rows))), epochs
    assert all(len(r) == len(rows[0]) for r in rows)
    return ckpts


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process: it must fail with rc 1 and one error line, which is returned."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---- detection ---------------------------------------------------------------------------------------------------
def _detection_args(data: Path, project: Path, name: str, epochs: int = 3) -> list[str]:
    return ["train", "--cfg", "yolov5n.yaml", "--data", str(data), "--imgsz", str(IMGSZ), "--epochs", str(epochs),
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noplots", "--noautoanchor",
            "--project", str(project), "--name", name]


@pytest.mark.slow
def test_detection_killed_in_a_write_mid_epoch_and_while_stripping_resumes(tiny_data, tmp_path, runs, capsys):
    project, epochs = tmp_path / "runs", 3
    save_dir = project / "det"
    weights = save_dir / "weights"

    # Killed while writing epoch 1's last.pt: epoch 0's stays, complete.
    _kill_in_write(runs(_detection_args(tiny_data, project, "det", epochs), pause=True), weights, "last.pt", 2)
    ckpts = _assert_readable(save_dir, yb.load_yolov5_checkpoint)
    assert ckpts["last.pt"]["epoch"] == 0 and ckpts["last.pt"]["optimizer"] is not None

    # Resumed, then killed during epoch 2, after epoch 1's checkpoint.
    _kill_in_next_epoch(runs(["train", "--resume", str(save_dir)]), save_dir, 1, progress=r"[\r\n]\s+2/2\s")
    ckpts = _assert_readable(save_dir, yb.load_yolov5_checkpoint)
    assert ckpts["last.pt"]["epoch"] == 1 and ckpts["last.pt"]["optimizer"] is not None

    # Resumed again, all epochs done, then killed while last.pt is rewritten as a plain student (its second write
    # in this process: epoch 2's checkpoint, then the strip): the full checkpoint of the last epoch is left.
    _kill_in_write(runs(["train", "--resume", str(weights / "last.pt")], pause=True), weights, "last.pt", 2)
    ckpts = _assert_readable(save_dir, yb.load_yolov5_checkpoint)
    assert ckpts["last.pt"]["epoch"] == epochs - 1 and ckpts["last.pt"]["optimizer"] is not None

    # Resumed once more: it only finishes the run. Each epoch logged once, plain students left.
    run = runs(["train", "--resume", str(save_dir)])
    assert run.finish() == 0, run.tail()
    ckpts = _assert_readable(save_dir, yb.load_yolov5_checkpoint)
    assert [int(r["epoch"]) for r in read_results(save_dir / "results.csv")] == list(range(epochs))
    for name in ("best.pt", "last.pt"):
        assert ckpts[name]["epoch"] == -1 and ckpts[name]["optimizer"] is None and "distill" not in ckpts[name]

    # A finished run has nothing to resume.
    error = _one_line_error(capsys, ["train", "--resume", str(save_dir)])
    assert str(weights / "last.pt") in error and "finished" in error


@pytest.mark.slow
def test_detection_killed_before_any_checkpoint(tiny_data, tmp_path, runs, capsys):
    project = tmp_path / "runs"
    weights = project / "det" / "weights"
    _kill_in_write(runs(_detection_args(tiny_data, project, "det"), pause=True), weights, "last.pt", 1)
    # best.pt is written before last.pt, so it may be there, complete; no last.pt means nothing to resume
    assert not (weights / "last.pt").exists()
    _assert_readable(project / "det", yb.load_yolov5_checkpoint)
    error = _one_line_error(capsys, ["train", "--resume", str(project / "det")])
    assert error.endswith(f"not found: {weights / 'last.pt'}")


# ---- classification ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bigger_shapes(tmp_path_factory) -> Path:
    """The shapes classes with 120 training images each: an epoch (45 batches) long enough to be killed in."""
    return make_shapes_dataset(tmp_path_factory.mktemp("bigger_shapes"), n_train=120, n_val=3, n_unlabeled=0)


def _distill_args(data: Path, teacher: Path, project: Path, name: str, epochs: int = 3) -> list[str]:
    return ["classify", "distill", "--data", str(data), "--teacher", str(teacher), "--model", "cnn_small",
            "--feature-layers", "auto", "--imgsz", str(CLASSIFY_IMGSZ), "--epochs", str(epochs), "--batch-size", "8",
            "--optimizer", "SGD", "--workers", "0", "--device", "cpu", "--project", str(project), "--name", name]


@pytest.mark.slow
def test_classify_distill_killed_in_a_write_and_mid_epoch_resumes(bigger_shapes, shape_teachers, tmp_path, runs,
                                                                   capsys):
    project, epochs = tmp_path / "runs", 3
    save_dir = project / "kd"
    weights = save_dir / "weights"
    args = _distill_args(bigger_shapes, shape_teachers[0], project, "kd", epochs)

    # Killed while writing epoch 1's last.pt: epoch 0's stays, complete, with what resuming needs.
    _kill_in_write(runs(args, pause=True), weights, "last.pt", 2)
    ckpts = _assert_readable(save_dir, read_checkpoint)
    assert ckpts["last.pt"]["epoch"] == 0
    state = ckpts["last.pt"]["resume"]
    assert state["kind"] == "distill" and state["options"]["epochs"] == epochs
    assert {"optimizer", "scheduler", "best_top1", "rng"} <= set(state)
    assert any(k.startswith("adapters.") for k in state["extra_trainable"])  # cnn_small 16 ch -> cnn 128 ch
    assert "resume" not in ckpts["best.pt"]

    # Resumed (every option from the checkpoint), then killed during epoch 2, after epoch 1's checkpoint.
    _kill_in_next_epoch(runs(["classify", "distill", "--resume", str(save_dir)]), save_dir, 1, progress=r"[\r\n]3/3:")
    ckpts = _assert_readable(save_dir, read_checkpoint)
    assert ckpts["last.pt"]["epoch"] == 1 and "resume" in ckpts["last.pt"]

    # Resumed again: finishes, each epoch logged once, plain classifiers left.
    run = runs(["classify", "distill", "--resume", str(weights / "last.pt")])
    assert run.finish() == 0, run.tail()
    ckpts = _assert_readable(save_dir, read_checkpoint)
    rows = read_results(save_dir / "results.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert ckpts["last.pt"]["epoch"] == epochs - 1
    assert not any("resume" in c for c in ckpts.values())

    # Optimizer (SGD's momentum), schedule, adapters and RNG all came back: the same student as a run never
    # interrupted, to the rounding that another process's kernels may differ in (see conftest).
    with one_torch_thread():
        trainer = KDTrainer(ClassifyOptions(
            data=str(bigger_shapes), t_weights=[str(shape_teachers[0])], model="cnn_small", d_layers="auto",
            imgsz=CLASSIFY_IMGSZ, epochs=epochs, batch_size=8, optimizer="SGD", workers=0, device="cpu",
            project=str(tmp_path / "ref"), name="kd")).setup()
        initial = initial_weights(trainer)
        reference = trainer.run()
    assert_same_training(ckpts["last.pt"]["model"], read_checkpoint(reference["last"])["model"], initial)
    assert rows == [pytest.approx(r, rel=1e-4) for r in read_results(Path(reference["save_dir"]) / "results.csv")]

    # A finished run has nothing to resume.
    error = _one_line_error(capsys, ["classify", "distill", "--resume", str(save_dir)])
    assert str(weights / "last.pt") in error and "finished" in error


def test_classify_killed_before_any_checkpoint(shapes_data, tmp_path, runs, capsys):
    project = tmp_path / "runs"
    weights = project / "cls" / "weights"
    args = ["classify", "train", "--data", str(shapes_data), "--model", "cnn_small", "--imgsz", str(CLASSIFY_IMGSZ),
            "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(project),
            "--name", "cls"]
    _kill_in_write(runs(args, pause=True), weights, "best.pt", 1)  # the first write of the run
    assert not list(weights.glob("*.pt"))
    error = _one_line_error(capsys, ["classify", "train", "--resume", str(project / "cls")])
    assert error.endswith(f"not found: {weights / 'last.pt'}")
