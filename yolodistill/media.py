"""Frames from what a user points a model at -- image and video files, folders and globs of both, .txt lists,
camera indices and RTSP/RTMP/HTTP streams -- and the annotated videos written back. OpenCV and numpy only: the
model side letterboxes, so any task can use it.

Our own readers, not yolov5's LoadImages/LoadStreams: those assert on a bad source (a traceback, not a line),
spin on cv2.waitKey and put black frames in when a stream drops.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .errors import UserError

LOGGER = logging.getLogger("yolodistill")
# yolov5's lists (utils/dataloaders.py), so the same files count as images and videos
IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
STALL_SECONDS = 30.0  # a live source with no new frame for this long has ended (FFmpeg's own read timeout is 30 s)
STREAM_FPS = 30.0  # what yolov5 assumes when a stream does not say its frame rate


def open_capture(target: Union[int, str]):
    """cv2.VideoCapture of a file, URL or camera index, OpenCV's own warnings silenced (our error says why)."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(target)
    finally:
        cv2.utils.logging.setLogLevel(level)


def _frame_rate(value: float, default: float) -> float:
    """A capture's CAP_PROP_FPS if it is believable, else `default` (streams often report 0 or 90000)."""
    return value if math.isfinite(value) and 0 < value <= 240 else default


def _safe_stem(text: str) -> str:
    """A file-name stem from a URL or camera index (rtsp://host/live/ch1 -> ch1)."""
    tail = text.rstrip("/").rsplit("/", 1)[-1] or text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("_") or "stream"


@dataclass(eq=False)
class Frame:
    image: np.ndarray  # (H, W, 3) BGR uint8, as OpenCV reads it
    source: "MediaSource"
    index: int  # 1-based place among the frames taken from its video or stream (yolov5's label names); 0: an image


class MediaSource:
    """One image, video file or live stream: `frames()` yields its frames; `stem` names what is written for it."""

    kind = "image"  # "image", "video" or "stream"
    fps = 0.0
    expected_frames: Optional[int] = 1  # None: not known ahead (a live stream)

    def __init__(self, path: str):
        self.path, self.stem, self.frames_taken = path, Path(path).stem, 0

    def frames(self) -> Iterator[Frame]:
        import cv2

        image = cv2.imread(self.path)
        if image is None:  # listed as readable, so damaged past its header
            LOGGER.warning(f"WARNING: skipping unreadable image {self.path}")
            return
        self.frames_taken = 1
        yield Frame(image, self, 0)

    def close(self) -> None:
        pass


class VideoFile(MediaSource):
    """Every `vid_stride`-th frame of a video file (or of a video at an http URL), in order, none dropped."""

    kind = "video"

    def __init__(self, path: str, *, vid_stride: int = 1):
        import cv2

        super().__init__(path)
        self.vid_stride = vid_stride
        cap = open_capture(path)
        if not cap.isOpened():
            raise UserError(f"cannot open video {path}: OpenCV has no decoder for it or the file is damaged")
        self.fps = _frame_rate(cap.get(cv2.CAP_PROP_FPS), STREAM_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.expected_frames = math.ceil(count / vid_stride) if count > 0 else None
        cap.release()  # reopened in frames(): a folder of videos should not hold every file open

    def frames(self) -> Iterator[Frame]:
        cap = open_capture(self.path)
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                self.frames_taken += 1
                yield Frame(image, self, self.frames_taken)
                if not all(cap.grab() for _ in range(self.vid_stride - 1)):
                    return
        finally:
            cap.release()


class LiveStream(MediaSource):
    """A camera or network stream read in a background thread that keeps only the newest frame, so a model slower
    than the camera (a Jetson) drops frames instead of falling ever further behind."""

    kind = "stream"
    expected_frames = None

    def __init__(self, target: str, *, vid_stride: int = 1, stall_seconds: float = STALL_SECONDS):
        import cv2

        super().__init__(target)
        self.stem = _safe_stem(target)
        self.vid_stride, self.stall_seconds = vid_stride, stall_seconds
        what = f"camera {target}" if target.isdigit() else f"stream {target}"
        self._cap = open_capture(int(target) if target.isdigit() else target)
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            raise UserError(f"cannot open {what}: no frame came (check the index or URL, and that nothing else "
                            f"holds the device)")
        self.fps = _frame_rate(self._cap.get(cv2.CAP_PROP_FPS), STREAM_FPS)
        self.end_reason = ""
        self._latest, self._latest_number, self._taken_number, self._reader_done = first, 1, 0, False
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_forever, name=f"read {self.stem}", daemon=True)
        self._thread.start()

    def _read_forever(self) -> None:
        """The reader thread: overwrite the newest frame until the source ends, fails or close() is called."""
        reason, number = "the source stopped sending frames (unplugged, dropped, or at the end)", 1
        try:
            while not self._stop.is_set():
                if not all(self._cap.grab() for _ in range(self.vid_stride - 1)):
                    break
                ok, image = self._cap.read()
                if not ok:
                    break
                number += 1
                with self._changed:
                    self._latest, self._latest_number = image, number
                    self._changed.notify_all()
        except Exception as e:  # OpenCV backends raise their own types; the run must still end with one line
            reason = f"reading failed: {(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}"
        finally:
            self._cap.release()
            with self._changed:
                self._reader_done = True
                self.end_reason = self.end_reason or ("" if self._stop.is_set() else reason)
                self._changed.notify_all()

    def next_frame(self) -> Optional[Frame]:
        """The newest frame not yet taken, waiting for one; None once the source has ended."""
        with self._changed:
            fresh = lambda: self._latest_number > self._taken_number or self._reader_done  # noqa: E731
            if not self._changed.wait_for(fresh, timeout=self.stall_seconds):
                self.end_reason = f"no new frame for {self.stall_seconds:g} s"
                self._stop.set()
                return None
            if self._latest_number <= self._taken_number:
                return None
            self._taken_number, image = self._latest_number, self._latest
        self.frames_taken += 1
        return Frame(image, self, self.frames_taken)

    def frames(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def close(self) -> None:
        self._stop.set()  # the thread releases the capture after its current read (a daemon: never waited for)


class MediaSources:
    """Everything one --source names: files in order, then the live streams taken in turn (a newest frame each)."""

    def __init__(self, sources: list[MediaSource], spec: str):
        self.spec = spec
        self.files = [s for s in sources if s.kind != "stream"]
        self.streams = [s for s in sources if s.kind == "stream"]
        _make_stems_unique(self.files + self.streams)

    @property
    def expected_frames(self) -> Optional[int]:
        """Frames the files will give (for a progress bar); None when a stream or a video does not say."""
        counts = [s.expected_frames for s in self.files + self.streams]
        return None if None in counts else sum(counts)

    def describe(self) -> str:
        """'3 images, 1 video, 1 stream'."""
        kinds = [s.kind for s in self.files + self.streams]
        return ", ".join(f"{kinds.count(k)} {k}{'s' * (kinds.count(k) > 1)}" for k in ("image", "video", "stream")
                         if k in kinds)

    def frames(self) -> Iterator[Frame]:
        for source in self.files:
            yield from source.frames()
        active = list(self.streams)
        while active:
            for stream in list(active):
                frame = stream.next_frame()
                if frame is None:
                    active.remove(stream)
                else:
                    yield frame

    def close(self) -> None:
        for source in self.files + self.streams:
            source.close()


def _make_stems_unique(sources: list[MediaSource]) -> None:
    """Two sources named alike (a/x.png and b/x.png, two streams ending in /live) write to x and x_2, not one file."""
    seen: dict[str, int] = {}
    for source in sources:
        n = seen.get(source.stem.lower(), 0) + 1
        seen[source.stem.lower()] = n
        if n > 1:
            source.stem = f"{source.stem}_{n}"


def open_sources(spec: str, *, vid_stride: int = 1, option: str = "--source") -> MediaSources:
    """The sources that `spec` names: an image or video file, a folder (recursively) or glob of both, a .txt list
    (one source a line, paths relative to the list's folder), a camera index (0) or a stream URL. `option` is the
    flag errors name (classify demo's --camera)."""
    if vid_stride < 1:
        raise UserError(f"--vid-stride must be at least 1, got {vid_stride}")
    spec = str(spec).strip()
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(errors="ignore").splitlines()]
        specs = [line for line in lines if line and not line.startswith("#")]
        if not specs:
            raise UserError(f"{option} {spec}: the list is empty")
        sources = [s for line in specs for s in _expand(line, vid_stride, option, base=path.parent, origin=spec)]
    else:
        sources = _expand(spec, vid_stride, option)
    if not sources:
        raise UserError(f"{option} {spec}: no readable images or videos "
                        f"(images: {', '.join(IMG_FORMATS)}; videos: {', '.join(VID_FORMATS)})")
    return MediaSources(sources, spec)


def _expand(spec: str, vid_stride: int, option: str, *, base: Optional[Path] = None,
            origin: str = "") -> list[MediaSource]:
    """The sources of one spec; in a .txt list (`base` its folder), relative paths are relative to the list."""
    if spec.isdigit() or (spec.lower().startswith(STREAM_SCHEMES) and _suffix(spec) not in VID_FORMATS):
        return [LiveStream(spec, vid_stride=vid_stride)]
    if spec.lower().startswith(STREAM_SCHEMES):  # a video file at a URL: FFmpeg reads it, every frame, no download
        return [VideoFile(spec, vid_stride=vid_stride)]
    path = Path(spec)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        return _readable([f for f in sorted(path.rglob("*")) if f.is_file()], vid_stride, option, explicit=False)
    if path.is_file():
        return _readable([path], vid_stride, option, explicit=True)
    if any(c in spec for c in "*?["):
        return _readable([Path(f) for f in sorted(glob.glob(str(path), recursive=True))], vid_stride, option,
                         explicit=False)
    where = f" (listed in {origin})" if origin else ""
    raise UserError(f"{option} {path}{where}: no such file or folder, and not a camera index or stream URL")


def _suffix(name: Union[str, Path]) -> str:
    return str(name).rsplit("?", 1)[0].rsplit(".", 1)[-1].lower() if "." in str(name) else ""


def _readable(files: list[Path], vid_stride: int, option: str, *, explicit: bool) -> list[MediaSource]:
    """Image and video sources among `files`; one named on its own must be readable, one found in a folder or
    glob is skipped with a warning when it is not."""
    import cv2

    sources: list[MediaSource] = []
    for f in files:
        kind = _suffix(f.name)
        try:
            if kind in IMG_FORMATS:
                if not cv2.haveImageReader(str(f)):
                    raise UserError(f"cannot read image {f}: not an image OpenCV can decode")
                sources.append(MediaSource(str(f)))
            elif kind in VID_FORMATS:
                sources.append(VideoFile(str(f), vid_stride=vid_stride))
            elif explicit:
                raise UserError(f"{option} {f} is neither an image ({', '.join(IMG_FORMATS)}) nor a video "
                                f"({', '.join(VID_FORMATS)})")
        except UserError as e:
            if explicit:
                raise
            LOGGER.warning(f"WARNING: skipping {f}: {e}")
    return sources


class VideoWriters:
    """Annotated videos, one per video file or stream, named after it: .mp4 with the 'mp4v' fourcc at the source's
    frame rate as yolov5's detect.py writes them (MJPG .avi where this OpenCV cannot write mp4v)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.written: list[Path] = []
        self._writers: dict[MediaSource, tuple] = {}  # source -> (cv2.VideoWriter, (width, height))

    def write(self, frame: Frame, image: np.ndarray) -> None:
        import cv2

        if frame.source not in self._writers:
            if frame.source.kind == "video":  # files come one after another: the previous one is complete
                self.release(kind="video")
            self._writers[frame.source] = self._open(frame.source, image.shape[1], image.shape[0])
        writer, size = self._writers[frame.source]
        if (image.shape[1], image.shape[0]) != size:  # a stream that changed resolution; VideoWriter drops those
            image = cv2.resize(image, size)
        writer.write(image)

    def _open(self, source: MediaSource, width: int, height: int) -> tuple:
        import cv2

        self.folder.mkdir(parents=True, exist_ok=True)
        for suffix, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG")):
            path = self.folder / f"{source.stem}{suffix}"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), source.fps, (width, height))
            if writer.isOpened():
                if suffix != ".mp4":
                    LOGGER.warning(f"WARNING: this OpenCV cannot write mp4v videos; writing {path.name} (MJPG)")
                self.written.append(path)
                return writer, (width, height)
        raise UserError(f"this OpenCV cannot write videos (neither mp4v nor MJPG) to {self.folder}: "
                        f"pass --nosave, or install an OpenCV built with FFmpeg")

    def release(self, kind: Optional[str] = None) -> None:
        """Finish the videos (of `kind`, or all), so each file is complete and playable."""
        for source in [s for s in self._writers if kind in (None, s.kind)]:
            self._writers.pop(source)[0].release()


def check_display() -> None:
    """Refuse --view-img up front where no window can open: without a display, OpenCV's Qt build aborts the
    process (no exception to catch) and a headless build raises on the first frame."""
    import os
    import sys

    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--view-img needs a display, and this machine has none (DISPLAY is not set): "
                        "drop --view-img, or run where a desktop is (ssh -X forwards one)")
    try:
        cv2.namedWindow("yolodistill", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("yolodistill")
    except cv2.error:
        raise UserError("--view-img: this OpenCV has no GUI (opencv-python-headless); "
                        "pip install opencv-python, or drop --view-img") from None


def show(window: str, image: np.ndarray) -> bool:
    """Show `image` in `window`; False once the user pressed q or Esc there."""
    import cv2

    cv2.imshow(window, image)
    return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)


def close_windows() -> None:
    import cv2

    with contextlib.suppress(cv2.error):
        cv2.destroyAllWindows()
