"""A deterministic synthetic detection dataset in YOLO format, with its difficulty as a dial.

Six classes in three look-alike pairs (square/rectangle, circle/ring, triangle/arrow), object sizes
up to half the image, rotation, colour and texture variation. What makes it hard is set by a
`Difficulty` (each knob 0..1, 1 the hardest): non-class clutter, how alike the look-alike pairs are,
blur, how small the smallest objects get, how much objects may hide each other, and background
noise. A `style` sets the look without changing the task: `flat` (gradient backgrounds, saturated fills)
or `textured` (brick, grain and speckle backgrounds under uneven light, pale outlined shapes that cast
shadows, a colour cast) -- a second domain for fine-tuning and domain-shift experiments. Everything comes
from one seeded numpy Generator per image, so the same seed and setting give the same bytes; at
difficulty 1 in the flat style the images are those of the generator before the dial existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from .data_options import SynthOptions
from .errors import UserError

CLASS_NAMES = ("square", "rectangle", "circle", "ring", "triangle", "arrow")
MIN_IMGSZ, MAX_IMGSZ = 32, 2048
STYLES = ("flat", "textured")


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the synthetic data, each from 0 (easiest) to 1 (hardest; the generator's original setting)."""

    clutter: float = 1.0  # distractors (lines, crosses, blobs): 0 none; 1 two to six behind, in front of half
    lookalikes: float = 1.0  # 1: rectangles as square as aspect 0.6, rings with small holes; 0: clearly apart
    blur: float = 1.0  # share of blurred images (0 to 35%) and the largest blur (sigma 0.5 to 1.3 px)
    small: float = 1.0  # smallest object: 11% of the image side at 0, 4% (at least 5 px) at 1
    occlusion: float = 1.0  # 0: objects never overlap; 1: up to half of an object may be hidden
    noise: float = 1.0  # background blotches and pixel noise, from 30% to 100% of their full strength

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{f.name} must be between 0 and 1, got {value}")

    @classmethod
    def level(cls, d: float, **overrides: Optional[float]) -> "Difficulty":
        """Every knob at `d`, except those given (None: not given)."""
        if not 0.0 <= d <= 1.0:
            raise UserError(f"--difficulty must be between 0 and 1, got {d}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown difficulty knobs: {sorted(unknown)}")
        return cls(**{f.name: d if overrides.get(f.name) is None else float(overrides[f.name]) for f in fields(cls)})

    def describe(self) -> str:
        """The knobs as `data synth` flags, e.g. `--clutter 0.5 --lookalikes 0.5 ...`."""
        return " ".join(f"--{f.name} {getattr(self, f.name):g}" for f in fields(self))

    @property
    def min_visible(self) -> float:
        """Smallest share of an object's pixels that later objects must leave visible."""
        return 1.0 - 0.5 * self.occlusion

    def min_object(self, imgsz: int) -> float:
        """Smallest object side in pixels."""
        return max(5.0, imgsz * (0.04 + 0.07 * (1.0 - self.small)))


HARDEST = Difficulty()


@dataclass
class SynthObject:
    cls: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, the shape's full (amodal) extent
    mask: np.ndarray  # bool (H, W): pixels of the shape as drawn, before anything covered it


def _polygon(cls: int, size: float, rng: np.random.Generator, lookalikes: float) -> np.ndarray:
    """Vertices (N, 2) of a class shape centred on 0 with its longest side about `size`."""
    s = size / 2
    if cls == 0:  # square
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if cls == 1:  # rectangle: elongated, so only the aspect ratio tells it from a square
        easy = 1.0 - lookalikes
        a = rng.uniform(0.38 - 0.1 * easy, 0.6 - 0.2 * easy)
        return np.array([[-s, -s * a], [s, -s * a], [s, s * a], [-s, s * a]])
    if cls == 4:  # triangle
        return np.array([[s, 0.0], [-s, -s * 0.85], [-s, s * 0.85]])
    if cls == 5:  # arrow: a triangle head on a shaft
        h, w = s * 0.85, s * 0.3
        return np.array([[s, 0], [0, -h], [0, -w], [-s, -w], [-s, w], [0, w], [0, h]])
    raise ValueError(cls)


def _texture(h: int, w: int, rng: np.random.Generator, pale: bool = False) -> np.ndarray:
    """A fill for one shape: a solid colour, stripes or a checkerboard of two colours (H, W, 3) uint8;
    `pale`: the textured style's washed-out palette."""
    saturation = (20, 120) if pale else (90, 256)
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*saturation), rng.integers(110, 256)]]], np.uint8)
    c1 = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.int16)
    c2 = np.clip(c1 + rng.integers(-90, 90, 3), 0, 255)
    kind = rng.choice(3, p=[0.6, 0.2, 0.2])
    yy, xx = np.mgrid[:h, :w]
    if kind == 0:
        pattern = np.zeros((h, w), bool)
    elif kind == 1:
        period, angle = rng.integers(3, 9), rng.uniform(0, math.pi)
        pattern = ((xx * math.cos(angle) + yy * math.sin(angle)) // period % 2).astype(bool)
    else:
        period = rng.integers(3, 9)
        pattern = ((xx // period + yy // period) % 2).astype(bool)
    return np.where(pattern[..., None], c2, c1).astype(np.uint8)


def _background(h: int, w: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """A colour gradient plus low-frequency blotches and pixel noise."""
    base = rng.integers(20, 200, 3).astype(np.float32)
    slope = rng.uniform(-60, 60, (2, 3)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = base + xx[..., None] / w * slope[0] + yy[..., None] / h * slope[1]
    strength = 0.3 + 0.7 * noise
    small = rng.normal(0, rng.uniform(10 * strength, 35 * strength),
                       (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, rng.uniform(3 * strength, 12 * strength), (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _textured_background(h: int, w: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """The textured style's ground: bricks, wood-like grain or speckle in a muted colour, lit unevenly."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 70), rng.integers(70, 190)]]], np.uint8)
    base = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    scale = max(h, w) / 160  # patterns keep their look at every image size
    kind = rng.integers(3)
    if kind == 0:  # bricks: rows of blocks, every other row offset by half a block, dark mortar
        bh, bw = rng.uniform(8, 16) * scale, rng.uniform(18, 34) * scale
        row = np.floor(yy / bh)
        x = xx + (row % 2) * bw / 2
        mortar = (np.mod(yy, bh) < 1.5 * scale) | (np.mod(x, bw) < 1.5 * scale)
        shade = rng.uniform(-18, 18, (int(h / bh) + 2, int(w / bw) + 3))  # each brick a little different
        pattern = shade[row.astype(int), np.floor(x / bw).astype(int)] - 45 * mortar
    elif kind == 1:  # grain: wavy stripes
        period, angle = rng.uniform(4, 10) * scale, rng.uniform(0, math.pi)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        pattern = 22 * np.sin(2 * math.pi * (u + 4 * scale * np.sin(v / (15 * scale))) / period)
    else:  # speckle: dense dots of two tones
        pattern = rng.choice([-30.0, 0.0, 25.0], size=(h, w), p=[0.2, 0.6, 0.2])
        pattern = cv2.GaussianBlur(pattern.astype(np.float32), (0, 0), 0.7 * scale)
    img = base + pattern[..., None]
    # uneven light: a bright spot somewhere, falling off to 55-80% at the far corners
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    dist = np.hypot(xx - cx, yy - cy) / math.hypot(w, h)
    img *= (1.0 - rng.uniform(0.2, 0.45) * dist / dist.max())[..., None]
    img += rng.normal(0, 2 + 6 * noise, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shadow_and_outline(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The textured style's depth cues, drawn in place: a soft shadow down-right of the shape (outside it),
    then returns the shape's outline (its pixels on the mask's edge), to be drawn dark after the fill."""
    h, w = mask.shape
    k = max(1, round(max(h, w) / 80))
    shift = np.float32([[1, 0, k * rng.uniform(1, 2.5)], [0, 1, k * rng.uniform(1, 2.5)]])
    shadow = cv2.warpAffine(mask.astype(np.float32), shift, (w, h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), k) * (~mask)
    img[:] = np.clip(img * (1.0 - 0.45 * shadow[..., None]), 0, 255).astype(np.uint8)
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=k).astype(bool)
    return mask & ~eroded


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Non-class distractors: lines, crosses and irregular blobs, drawn in place."""
    h, w = img.shape[:2]
    for _ in range(n):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            p1, p2 = rng.integers(0, [w, h]), rng.integers(0, [w, h])
            cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), color, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            c, r = rng.integers(0, [w, h]), int(rng.integers(3, max(4, min(h, w) // 10)))
            cv2.line(img, (int(c[0] - r), int(c[1])), (int(c[0] + r), int(c[1])), color, 1, cv2.LINE_AA)
            cv2.line(img, (int(c[0]), int(c[1] - r)), (int(c[0]), int(c[1] + r)), color, 1, cv2.LINE_AA)
        else:  # a jagged star-like blob: no straight sides, no round outline
            k = int(rng.integers(5, 9))
            c, r = rng.uniform(0, [w, h]), rng.uniform(3, max(4, min(h, w) / 8))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = r * rng.uniform(0.3, 1.0, k)
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)


def _shape_mask(cls: int, size: float, centre: np.ndarray, angle: float, h: int, w: int,
                rng: np.random.Generator, lookalikes: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    mask = np.zeros((h, w), np.uint8)
    if cls in (2, 3):  # circle and ring: rotation-free, told apart only by the hole
        r = size / 2
        cx, cy = (int(round(v)) for v in centre)
        cv2.circle(mask, (cx, cy), max(1, int(round(r))), 1, -1, cv2.LINE_8)
        if cls == 3:  # the smaller the hole, the more a ring looks like a circle
            easy = 1.0 - lookalikes
            hole = rng.uniform(0.45 + 0.1 * easy, 0.65 + 0.05 * easy)
            cv2.circle(mask, (cx, cy), max(1, int(round(r * hole))), 0, -1, cv2.LINE_8)
        box = (cx - r, cy - r, cx + r, cy + r)
    else:
        pts = _polygon(cls, size, rng, lookalikes)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = pts @ rot.T + centre
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
        box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
    return mask.astype(bool), box


def render_image(rng: np.random.Generator, imgsz: int, classes: int, difficulty: Difficulty = HARDEST,
                 style: str = "flat") -> tuple[np.ndarray, list[SynthObject]]:
    """One image (imgsz, imgsz, 3) BGR uint8 and its objects."""
    if style not in STYLES:
        raise UserError(f"--style must be one of {', '.join(STYLES)}, got {style!r}")
    d = difficulty
    textured = style == "textured"
    h = w = imgsz
    img = (_textured_background if textured else _background)(h, w, rng, d.noise)
    _clutter(img, rng, int(rng.integers(round(2 * d.clutter), round(6 * d.clutter) + 1)))
    owner = np.full((h, w), -1, np.int32)  # which object each pixel shows, for the occlusion limit
    objects: list[SynthObject] = []
    min_size, max_size = d.min_object(imgsz), imgsz * 0.45
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(10):
            cls = int(rng.integers(classes))
            size = float(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
            centre = rng.uniform(size / 2, [w - size / 2, h - size / 2])
            mask, box = _shape_mask(cls, size, centre, rng.uniform(0, 2 * math.pi), h, w, rng, d.lookalikes)
            if mask.sum() < 6:
                continue
            covered = owner[mask]
            if all((owner == i).sum() - (covered == i).sum() >= d.min_visible * o.mask.sum()
                   for i, o in enumerate(objects)):
                break
        else:
            continue
        outline = _shadow_and_outline(img, mask, rng) if textured else None
        tex = _texture(h, w, rng, pale=textured)
        img[mask] = tex[mask]
        if outline is not None:
            img[outline] = (tex[outline] * rng.uniform(0.2, 0.4)).astype(np.uint8)
        owner[mask] = len(objects)
        x0, y0, x1, y1 = box
        objects.append(SynthObject(cls, (max(0.0, x0), max(0.0, y0), min(w, x1), min(h, y1)), mask))
    if rng.random() < 0.5 * d.clutter:
        _clutter(img, rng, int(rng.integers(1, 3)))  # small distractors in front of objects too
    if rng.random() < 0.35 * d.blur:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.5 + 0.8 * d.blur))
    noise = rng.normal(0, rng.uniform(0, 8 * d.noise), img.shape)
    img = img + noise
    if textured:  # a colour cast: the camera's white balance is off
        img = img * rng.uniform(0.8, 1.2, 3)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def yolo_label_lines(objects: list[SynthObject], imgsz: int) -> list[str]:
    """`class cx cy w h` lines, normalised to [0, 1]."""
    lines = []
    for o in objects:
        x0, y0, x1, y1 = o.box
        lines.append(f"{o.cls} {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} "
                     f"{(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}")
    return lines


def generate(out: str | Path, **options) -> Path:
    """Write images/{train,val,test}, labels/{train,val,test} and data.yaml under `out`; returns the yaml path.
    `options`: SynthOptions' fields (the `yolodistill data synth` flags), e.g. n_train=800, imgsz=160, seed=0.

    val picks the checkpoint (best.pt) and the settings; test, which nothing is chosen on, scores them. n_test=0
    writes no test split. n_unlabeled > 0 also writes images/unlabeled, footage of the same kind without labels
    (for `train --unlabeled`): no model trained on train/ has seen them. data.yaml does not list them, so a run
    uses them only when told to."""
    options = SynthOptions(out=str(out), **options)
    out, difficulty = Path(out), _difficulty(options)
    if not MIN_IMGSZ <= options.imgsz <= MAX_IMGSZ:
        raise UserError(f"--imgsz must be between {MIN_IMGSZ} and {MAX_IMGSZ}, got {options.imgsz}")
    counts = (options.n_train, options.n_val, options.n_test, options.n_unlabeled)
    if min(counts[:2]) < 1 or min(counts[2:]) < 0:
        raise UserError(f"--n-train and --n-val must be at least 1, --n-test and --n-unlabeled at least 0, got "
                        f"{counts[0]}, {counts[1]}, {counts[2]} and {counts[3]}")
    if not 1 <= options.classes <= len(CLASS_NAMES):
        raise UserError(f"--classes must be between 1 and {len(CLASS_NAMES)}, got {options.classes}")
    if options.style not in STYLES:
        raise UserError(f"--style must be one of {', '.join(STYLES)}, got {options.style!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not options.exist_ok:
        raise UserError(f"--out {out} is not empty; pass --exist-ok to write into it")
    # One child seed per image: any image can be regenerated alone, and n_train does not shift val. Each split
    # draws from its own child of the seed; test's is the third, so train and val are the bytes they were before
    # there was a test split (SeedSequence.spawn numbers its children: spawn(3)[:2] == spawn(2)); the unlabeled
    # pool's is the fourth, for the same reason.
    seeds = np.random.SeedSequence(options.seed).spawn(4)
    for split, n, ss in zip(("train", "val", "test", "unlabeled"), counts, seeds):
        if not n:
            continue
        labeled = split != "unlabeled"
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        if labeled:
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i, child in enumerate(tqdm(ss.spawn(n), desc=f"synth {split}", disable=not options.progress)):
            img, objects = render_image(np.random.default_rng(child), options.imgsz, options.classes, difficulty,
                                        options.style)
            name = f"{split}_{i:05d}"
            cv2.imwrite(str(out / "images" / split / f"{name}.png"), img)
            if labeled:
                (out / "labels" / split / f"{name}.txt").write_text("".join(
                    line + "\n" for line in yolo_label_lines(objects, options.imgsz)))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES[:options.classes]))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"# yolodistill data synth --seed {options.seed} --imgsz {options.imgsz} --style "
                         f"{options.style} {difficulty.describe()}\n"
                         f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n"
                         + ("test: images/test\n" if options.n_test else "") +
                         f"nc: {options.classes}\nnames:\n{names}")
    return yaml_path


def _difficulty(options: SynthOptions) -> Difficulty:
    """--difficulty (or a Difficulty), with the knobs given overriding it."""
    knobs = {f.name: getattr(options, f.name) for f in fields(Difficulty)}
    if isinstance(options.difficulty, Difficulty):
        return replace(options.difficulty, **{k: float(v) for k, v in knobs.items() if v is not None})
    return Difficulty.level(float(options.difficulty), **knobs)
