"""`yolodistill detect` on what deploys (.pt, .onnx, .engine) and what it deploys on (images, videos, folders,
.txt lists, cameras, streams), and `val` of an engine. A tiny yolov5n on the CPU; TensorRT is faked (its glue only)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolodistill import media
from yolodistill import yolo_backend as yb
from yolodistill.runtime.tensorrt_engine import tensorrt_status

from .conftest import IMGSZ, yolov5n_with_data_statistics
from .deploy_helpers import _one_thread, run  # noqa: F401 -- torch on one thread here too; the CLI runner

pytestmark = pytest.mark.float_sensitive  # its fixture exports through the parity check; .pt and .onnx boxes compared

CLIP_FRAMES, CLIP_HW, CLIP_FPS = 6, (60, 80), 5.0


def fails(capsys, *argv) -> str:
    """Run the CLI; expect exit 1 with one error line last on stderr and no traceback; return that line."""
    capsys.readouterr()
    rc = run(*argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


def rows(folder: Path, pattern: str = "*.txt") -> list[list[float]]:
    return [[float(v) for v in line.split()] for f in sorted(folder.glob(pattern))
            for line in f.read_text().splitlines()]


def video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def student(tiny_data, tmp_path_factory) -> Path:
    """A yolov5n checkpoint with its ONNX file (fixed 64x64) beside it; BatchNorm statistics from the tiny dataset
    (conftest.yolov5n_with_data_statistics), so its boxes follow the image."""
    from yolodistill.checkpoint import save_checkpoint_atomic
    from yolodistill.deploy.export import export

    model = yolov5n_with_data_statistics(tiny_data)
    weights = tmp_path_factory.mktemp("student") / "student.pt"
    save_checkpoint_atomic({"model": model.half(), "opt": {"imgsz": IMGSZ}}, weights)
    export(weights, include=("onnx",), imgsz=[IMGSZ])
    return weights


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 6-frame 80x60 mp4v video at 5 fps: a rectangle moving over noise."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, CLIP_HW[::-1])
    rng = np.random.default_rng(0)
    for i in range(CLIP_FRAMES):
        frame = rng.integers(0, 60, (*CLIP_HW, 3), dtype=np.uint8)
        cv2.rectangle(frame, (10 + 4 * i, 12), (40 + 4 * i, 44), (200, 180, 90), -1)
        writer.write(frame)
    writer.release()
    assert len(video_frames(path)) == CLIP_FRAMES  # this OpenCV writes and reads back mp4v
    return path


@pytest.fixture(scope="module")
def image(tiny_data) -> Path:
    return tiny_data.parent / "images" / "val" / "0000.png"


def test_onnx_on_a_video_writes_the_video_and_frame_labels(student, clip, tmp_path):
    onnx = student.with_suffix(".onnx")
    assert run("detect", "--weights", onnx, "--source", clip, "--conf-thres", "0", "--save-txt",
               "--project", tmp_path, "--name", "v") == 0
    frames = video_frames(tmp_path / "v" / "clip.mp4")
    assert len(frames) == CLIP_FRAMES and frames[0].shape[:2] == CLIP_HW
    # yolov5's names for video frames: {stem}_{frame}.txt, frames counted from 1; at --conf-thres 0 every frame
    # has boxes (a confidence is a product of sigmoids, never 0)
    labels = tmp_path / "v" / "labels"
    assert sorted(f.name for f in labels.iterdir()) == sorted(f"clip_{i}.txt" for i in range(1, CLIP_FRAMES + 1))
    table = np.array(rows(labels))
    assert table.shape[1] == 5 and set(table[:, 0]) <= {0, 1}
    assert (table[:, 1:] >= 0).all() and (table[:, 1:] <= 1).all()  # x y w h of boxes clipped to the frame

    assert run("detect", "--weights", onnx, "--source", clip, "--conf-thres", "0", "--save-txt", "--save-conf",
               "--nosave", "--vid-stride", "2", "--project", tmp_path, "--name", "c") == 0
    assert not list((tmp_path / "c").glob("*.mp4"))
    labels = tmp_path / "c" / "labels"
    assert sorted(f.name for f in labels.iterdir()) == [f"clip_{i}.txt" for i in (1, 2, 3)]  # every 2nd frame
    table = np.array(rows(labels))
    assert table.shape[1] == 6 and (table[:, 1:] >= 0).all() and (table[:, 1:] <= 1).all()


# Boxes from the .pt and the .onnx file of one model. Both runs letterbox the 64x64 image to the same 64x64
# input, so only float32 arithmetic differs: torch and onnxruntime sum each convolution's products in other
# orders, a few units of 2^-24 (6e-8) relative per layer, over yolov5n's ~60 layers at most ~1e-5 of a value.
# A confidence (a product of sigmoids, at most 1) then differs by far less than CONF_TOL = 1e-4. Corners are
# rounded to whole pixels after scaling: a corner within that float error of a half pixel rounds either way, so
# x, y move by up to 1 px and w, h by up to 2 px (both corners): BOX_TOL = 2 px of 64, plus %g's 6 digits.
# --iou-thres 1 keeps NMS from suppressing anything: which of two boxes with near-equal scores survives is a
# discontinuity that float noise may flip; every candidate box is compared instead.
CONF_TOL = 1e-4
BOX_TOL = 2 / IMGSZ + 1e-5


def test_pt_and_onnx_give_the_same_boxes(student, image, tmp_path):
    for weights, name in ((student, "pt"), (student.with_suffix(".onnx"), "onnx")):
        assert run("detect", "--weights", weights, "--source", image, "--imgsz", IMGSZ, "--conf-thres", "0",
                   "--iou-thres", "1", "--save-txt", "--save-conf", "--nosave", "--project", tmp_path,
                   "--name", name) == 0
    pt, onnx = (np.array(rows(tmp_path / name / "labels")) for name in ("pt", "onnx"))
    n_candidates = 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # 3 anchors on 8x8, 4x4 and 2x2 grids
    assert len(pt) == len(onnx) == n_candidates
    for a, b in ((pt, onnx), (onnx, pt)):  # each box has its twin in the other file
        for row in a:
            twin = ((b[:, 0] == row[0]) & (np.abs(b[:, 1:5] - row[1:5]).max(1) <= BOX_TOL)
                    & (np.abs(b[:, 5] - row[5]) <= CONF_TOL))
            assert twin.any(), row


def test_classes_filters_and_agnostic_nms_runs(student, image, tmp_path):
    onnx = student.with_suffix(".onnx")
    common = ("--source", image, "--conf-thres", "0", "--save-txt", "--nosave", "--project", tmp_path)
    assert run("detect", "--weights", onnx, *common, "--name", "all") == 0
    assert run("detect", "--weights", onnx, *common, "--classes", "1", "--name", "one") == 0
    everything, ones = rows(tmp_path / "all" / "labels"), rows(tmp_path / "one" / "labels")
    # NMS runs per class, so filtering before it leaves exactly the class-1 boxes of the unfiltered run
    assert ones and {0, 1} == {r[0] for r in everything}
    assert sorted(ones) == sorted(r for r in everything if r[0] == 1)
    assert run("detect", "--weights", onnx, *common, "--agnostic-nms", "--name", "agn") == 0
    assert 0 < len(rows(tmp_path / "agn" / "labels")) <= len(everything)  # across classes: suppresses more


def test_folder_and_txt_list_mixing_images_and_a_video(student, image, clip, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "still.png").write_bytes(image.read_bytes())
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "notes.md").write_text("not media: skipped\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"media/still.png\n\n{folder / 'clip.mp4'}\n")  # relative to the list, and absolute
    for source, name in ((folder, "dir"), (listing, "txt")):
        assert run("detect", "--weights", student.with_suffix(".onnx"), "--source", source, "--conf-thres", "0",
                   "--save-txt", "--project", tmp_path, "--name", name) == 0
        out = tmp_path / name
        assert sorted(f.name for f in out.iterdir()) == ["clip.mp4", "labels", "still.png"]
        assert cv2.imread(str(out / "still.png")).shape == cv2.imread(str(image)).shape
        assert len(video_frames(out / "clip.mp4")) == CLIP_FRAMES
        expected = ["still.txt", *(f"clip_{i}.txt" for i in range(1, CLIP_FRAMES + 1))]
        assert sorted(f.name for f in (out / "labels").iterdir()) == sorted(expected)


class FakeCamera:
    """A cv2.VideoCapture stand-in: `frames` frames (every pixel = the frame's number), `delay` seconds apart,
    then a failed read, as a camera that is unplugged."""

    def __init__(self, frames: int, delay: float = 0.0):
        self.frames, self.delay, self.number = frames, delay, 0
        self.exhausted = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 -- OpenCV's spelling
        return True

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        time.sleep(self.delay)
        if self.number >= self.frames:
            self.exhausted.set()
            return False, None
        self.number += 1
        return True, np.full((48, 64, 3), self.number, np.uint8)

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        pass


def test_live_reader_hands_out_the_newest_frame_and_ends(monkeypatch):
    camera = FakeCamera(frames=50)
    monkeypatch.setattr(media, "open_capture", lambda target: camera)
    stream = media.LiveStream("0")
    assert camera.exhausted.wait(10)  # the reader read all 50 before anyone asked: frames 1-49 are dropped
    frame = stream.next_frame()
    assert frame.index == 1 and int(frame.image[0, 0, 0]) == 50
    assert stream.next_frame() is None and "stopped sending frames" in stream.end_reason


def test_live_reader_ends_a_stalled_stream(monkeypatch):
    hang = threading.Event()

    class Stalls(FakeCamera):
        def read(self):
            if self.number:
                hang.wait()  # a network stream that stops answering
            return super().read()

    monkeypatch.setattr(media, "open_capture", lambda target: Stalls(frames=10))
    stream = media.LiveStream("rtsp://camera/live", stall_seconds=0.2)
    assert stream.stem == "live" and stream.next_frame().index == 1
    assert stream.next_frame() is None and "no new frame for 0.2 s" in stream.end_reason
    hang.set()


def test_a_stream_that_ends_keeps_what_was_written(student, monkeypatch, caplog, tmp_path):
    """Detect on camera 0 (a fake that gives 8 frames and is then unplugged): a clean exit, a playable video of
    every frame processed, a label file for each, and one line saying how it ended."""
    caplog.set_level("INFO", logger="yolodistill")
    monkeypatch.setattr(media, "open_capture", lambda target: FakeCamera(frames=8, delay=0.01))
    assert run("detect", "--weights", student.with_suffix(".onnx"), "--source", "0", "--conf-thres", "0",
               "--save-txt", "--project", tmp_path, "--name", "cam") == 0
    n = len(list((tmp_path / "cam" / "labels").glob("0_*.txt")))
    assert 1 <= n <= 8
    assert sorted((tmp_path / "cam" / "labels").iterdir()) == [tmp_path / "cam" / "labels" / f"0_{i}.txt"
                                                               for i in range(1, n + 1)]
    assert len(video_frames(tmp_path / "cam" / "0.mp4")) == n
    assert f"0: ended after {n} frames: the source stopped sending frames" in caplog.text


def test_ctrl_c_ends_a_live_run_with_its_video_finished(student, monkeypatch, caplog, tmp_path):
    caplog.set_level("INFO", logger="yolodistill")
    monkeypatch.setattr(media, "open_capture", lambda target: FakeCamera(frames=10**6, delay=0.005))
    real, calls = yb.detect_boxes, []

    def interrupted_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(yb, "detect_boxes", interrupted_on_the_fourth)
    assert run("detect", "--weights", student.with_suffix(".onnx"), "--source", "0", "--conf-thres", "0",
               "--project", tmp_path, "--name", "cam") == 0
    assert "stopped by Ctrl-C after 3 frames" in caplog.text
    assert len(video_frames(tmp_path / "cam" / "0.mp4")) == 3


def test_qat_student_runs_with_its_quantizers(student, image, caplog, tmp_path):
    from copy import deepcopy

    from yolodistill.checkpoint import save_checkpoint_atomic
    from yolodistill.compress import quant

    ckpt = yb.load_yolov5_checkpoint(student)
    quantized = deepcopy(ckpt["model"]).float().eval()
    quant.quantize_model(quantized)
    x = yb.prepare_image(cv2.imread(str(image)), (IMGSZ, IMGSZ), stride=32, auto=False, device="cpu")
    quant.calibrate(quantized, [x], lambda batch: quantized(batch))
    save_checkpoint_atomic({**ckpt, "quant": quant.quant_state(quantized)}, tmp_path / "qat.pt")
    caplog.set_level("INFO", logger="yolodistill")
    assert run("detect", "--weights", tmp_path / "qat.pt", "--source", image, "--imgsz", IMGSZ,
               "--project", tmp_path, "--name", "q") == 0
    assert "runs with its INT8 fake quantizers" in caplog.text


@pytest.mark.parametrize("source, message", [
    ("missing.png", "no such file or folder"),
    ("empty", "no readable images or videos"),
    ("notes.md", "neither an image"),
    ("list.txt", "(listed in"),
])
def test_bad_sources_are_one_line(student, source, message, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("hello\n")
    (tmp_path / "list.txt").write_text("missing.png\n")
    line = fails(capsys, "detect", "--weights", student, "--source", tmp_path / source, "--project", tmp_path)
    assert message in line


@pytest.mark.parametrize("source, message", [("0", "cannot open camera 0"),
                                             ("rtsp://192.0.2.1/live", "cannot open stream rtsp://192.0.2.1/live")])
def test_unopenable_camera_or_stream_is_one_line(student, source, message, monkeypatch, capsys, tmp_path):
    class Closed(FakeCamera):
        def isOpened(self) -> bool:  # noqa: N802
            return False

    monkeypatch.setattr(media, "open_capture", lambda target: Closed(frames=0))
    line = fails(capsys, "detect", "--weights", student, "--source", source, "--project", tmp_path)
    assert message in line
    assert "--vid-stride must be at least 1" in fails(capsys, "detect", "--weights", student, "--source", source,
                                                      "--vid-stride", "0", "--project", tmp_path)


def test_view_img_without_a_display_is_one_line(student, image, monkeypatch, capsys, tmp_path):
    """OpenCV's Qt build aborts the whole process when a window cannot open: refused before it tries."""
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    line = fails(capsys, "detect", "--weights", student, "--source", image, "--view-img", "--project", tmp_path)
    assert "--view-img needs a display" in line


@pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT runs here")
def test_engine_without_tensorrt_is_one_line(tiny_data, capsys, tmp_path):
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"not built here")
    why = tensorrt_status()[1]
    for argv in (("val", "--data", tiny_data), ("detect", "--source", tiny_data.parent / "images" / "val")):
        line = fails(capsys, argv[0], "--weights", engine, *argv[1:], "--project", tmp_path)
        assert "cannot run TensorRT engine" in line and why in line
    assert "not found" in fails(capsys, "val", "--weights", tmp_path / "nope.engine", "--data", tiny_data)


class OnnxAsEngine:
    """Stands in for runtime.tensorrt_engine.TensorRTRunner: runs ONNX_FILE through onnxruntime and answers what
    TensorRTDetector asks of a runner (input_name, output_names, engine.get_tensor_shape, run_torch)."""

    onnx_file: Path = Path()

    def __init__(self, engine_path):
        from yolodistill.runtime.onnx_file import ort_session

        self.session = ort_session(self.onnx_file)
        tensors = {t.name: t.shape for t in self.session.get_inputs() + self.session.get_outputs()}
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [t.name for t in self.session.get_outputs()]
        self.engine = type("Engine", (), {"get_tensor_shape": lambda _, name: [
            d if isinstance(d, int) else -1 for d in tensors[name]]})()

    def run_torch(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: x.numpy()})]


def test_engine_glue_names_size_detect_and_val(student, image, tiny_data, monkeypatch, caplog, tmp_path):
    """The .engine glue, not TensorRT: TensorRTRunner is replaced by onnxruntime on the engine's ONNX file, so
    detect and val through an engine must give what they give for that ONNX file."""
    from yolodistill.runtime import tensorrt_engine

    caplog.set_level("INFO", logger="yolodistill")
    monkeypatch.setattr(tensorrt_engine, "TensorRTRunner", OnnxAsEngine)
    monkeypatch.setattr(OnnxAsEngine, "onnx_file", student.with_suffix(".onnx"))
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"stand-in")

    alone = tensorrt_engine.TensorRTDetector(engine)  # no .onnx beside it, no --data
    assert alone.names == ["class0", "class1"] and "carries no class names" in caplog.text
    assert tensorrt_engine.TensorRTDetector(engine, data=tiny_data).names == ["rect", "circle"]
    (tmp_path / "student.onnx").write_bytes(student.with_suffix(".onnx").read_bytes())
    beside = tensorrt_engine.TensorRTDetector(engine)
    assert beside.names == {0: "rect", 1: "circle"} and beside.input_hw == (IMGSZ, IMGSZ)

    for weights, name in ((engine, "engine"), (student.with_suffix(".onnx"), "onnx")):
        assert run("detect", "--weights", weights, "--source", image, "--imgsz", "320", "--conf-thres", "0",
                   "--save-txt", "--save-conf", "--project", tmp_path, "--name", name) == 0
    assert "takes fixed 64x64 images" in caplog.text
    assert rows(tmp_path / "engine" / "labels") == rows(tmp_path / "onnx" / "labels")  # same onnxruntime run
    assert run("val", "--weights", engine, "--data", tiny_data, "--imgsz", IMGSZ, "--batch-size", "4",
               "--workers", "0", "--device", "cpu", "--project", tmp_path, "--name", "val") == 0
