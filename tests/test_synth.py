"""The synthetic dataset: deterministic bytes, labels inside the image, boxes that match what was drawn."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from yolodistill.cli import main
from yolodistill.errors import UserError
from yolodistill.synth import CLASS_NAMES, STYLES, Difficulty, generate, render_image, yolo_label_lines


def load_objects_for_check(label_file: Path, imgsz: int) -> Optional[np.ndarray]:
    """Labels of one file as (N, 5) [cls, x0, y0, x1, y1] in pixels."""
    rows = [list(map(float, line.split())) for line in label_file.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    a = np.array(rows)
    xyxy = np.stack([a[:, 1] - a[:, 3] / 2, a[:, 2] - a[:, 4] / 2, a[:, 1] + a[:, 3] / 2, a[:, 2] + a[:, 4] / 2], 1)
    return np.concatenate([a[:, :1], xyxy * imgsz], 1)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "data.yaml")


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", n_train=6, n_val=2, n_test=2, imgsz=96, seed=3, progress=False).parent
    b = generate(tmp_path / "b", n_train=6, n_val=2, n_test=2, imgsz=96, seed=3, progress=False).parent
    c = generate(tmp_path / "c", n_train=6, n_val=2, n_test=2, imgsz=96, seed=4, progress=False).parent
    assert _files(a) == _files(b)
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    assert not all(filecmp.cmp(a / f, c / f, shallow=False) for f in _files(a) if f.suffix == ".png")


def test_three_disjoint_splits_and_train_val_bytes_unchanged_by_test(tmp_path):
    import cv2
    import yaml

    root = generate(tmp_path / "s", n_train=4, n_val=3, n_test=5, imgsz=64, seed=3, progress=False).parent
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    pngs = {split: sorted((root / "images" / split).glob("*.png")) for split in ("train", "val", "test")}
    assert [len(v) for v in pngs.values()] == [4, 3, 5]
    assert all(len(list((root / "labels" / split).glob("*.txt"))) == len(pngs[split]) for split in pngs)
    # disjoint: no image of one split is pixel-identical to an image of another
    pixels = {split: [cv2.imread(str(f)).tobytes() for f in files] for split, files in pngs.items()}
    assert not set(pixels["test"]) & (set(pixels["train"]) | set(pixels["val"]))
    assert not set(pixels["train"]) & set(pixels["val"])
    # no test split: the same train and val bytes, and no test key
    none = generate(tmp_path / "n", n_train=4, n_val=3, n_test=0, imgsz=64, seed=3, progress=False).parent
    assert "test" not in yaml.safe_load((none / "data.yaml").read_text()) and not (none / "images" / "test").exists()
    assert all(filecmp.cmp(root / f, none / f, shallow=False) for f in _files(none))
    # and the bytes from before there was a test split: val image i came from SeedSequence(seed).spawn(2)[1]'s
    # i-th child (the earlier two-split code), which spawn(3) leaves as it was
    old_val = np.random.SeedSequence(3).spawn(2)[1].spawn(3)
    for i, child in enumerate(old_val):
        img, _ = render_image(np.random.default_rng(child), 64, 6)
        assert np.array_equal(cv2.imread(str(pngs["val"][i])), img)


def test_labels_in_range_and_inside_image(tmp_path):
    root = generate(tmp_path / "d", n_train=40, n_val=5, n_test=0, imgsz=160, seed=0, progress=False).parent
    sizes, classes = [], set()
    for f in (root / "labels" / "train").glob("*.txt"):
        objs = load_objects_for_check(f, 160)
        if objs is None:
            continue
        assert ((objs[:, 0] >= 0) & (objs[:, 0] < len(CLASS_NAMES))).all()
        assert (objs[:, 1:] >= -0.01).all() and (objs[:, 1:] <= 160.01).all()
        classes |= {int(c) for c in objs[:, 0]}
        sizes += list(np.maximum(objs[:, 3] - objs[:, 1], objs[:, 4] - objs[:, 2]))
    assert min(sizes) < 12 and max(sizes) > 50  # small and large objects at the default size
    assert classes == set(range(6))


def test_boxes_match_drawn_objects():
    rng = np.random.default_rng(7)
    for _ in range(10):
        img, objects = render_image(rng, 128, 6)
        assert img.shape == (128, 128, 3)
        for o, line in zip(objects, yolo_label_lines(objects, 128)):
            ys, xs = np.nonzero(o.mask)
            x0, y0, x1, y1 = o.box
            # the drawn pixels lie in the labelled box (1 px of rasterisation slack)
            assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 1.5 and ys.min() >= y0 - 1.5 and ys.max() <= y1 + 1.5
            # and fill it: the box is no larger than the drawn extent plus slack
            assert (x1 - x0) <= xs.max() - xs.min() + 3 and (y1 - y0) <= ys.max() - ys.min() + 3
            assert int(line.split()[0]) == o.cls


def test_refuses_non_empty_folder_and_bad_sizes(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate(tmp_path / "full", n_train=1, n_val=1, n_test=0, progress=False)
    generate(tmp_path / "full", n_train=1, n_val=1, n_test=0, exist_ok=True, progress=False)
    for kwargs, msg in (({"imgsz": 8}, "--imgsz"), ({"n_train": 0}, "--n-train"), ({"n_test": -1}, "--n-test"),
                        ({"classes": 9}, "--classes")):
        with pytest.raises(UserError, match=msg):
            generate(tmp_path / "bad", **{"n_train": 1, "n_val": 1, "n_test": 0, **kwargs}, progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err


# ---- the difficulty dial -----------------------------------------------------------------------------------------
SETTINGS = {
    "easiest": Difficulty.level(0.0),
    "middle": Difficulty.level(0.5),
    "hardest": Difficulty.level(1.0),
    "mixed": Difficulty.level(0.3, clutter=1.0, occlusion=0.0, small=0.8),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_same_seed_and_setting_same_bytes(tmp_path, name):
    kw = dict(n_train=3, n_val=1, n_test=1, imgsz=96, seed=5, difficulty=SETTINGS[name], progress=False)
    a, b = (generate(tmp_path / x, **kw).parent for x in "ab")
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    other = SETTINGS["hardest" if name != "hardest" else "easiest"]
    c = generate(tmp_path / "c", **{**kw, "difficulty": other}).parent
    assert not all(filecmp.cmp(a / f, c / f, shallow=False) for f in _files(a) if f.suffix == ".png")
    assert SETTINGS[name].describe() in (a / "data.yaml").read_text().splitlines()[0]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", SETTINGS)
def test_labels_correct_at_every_setting(name, style):
    """Boxes enclose and fit what was drawn, the smallest size and the occlusion limit hold, classes are right."""
    d, imgsz = SETTINGS[name], 128
    rng = np.random.default_rng(11)
    for _ in range(12):
        img, objects = render_image(rng, imgsz, 6, d, style)
        assert img.shape == (imgsz, imgsz, 3) and img.dtype == np.uint8
        later = np.zeros((imgsz, imgsz), bool)
        for o in reversed(objects):  # what later objects leave visible of each one
            visible = o.mask & ~later
            assert visible.sum() >= d.min_visible * o.mask.sum() - 1e-9
            later |= o.mask
        for o, line in zip(objects, yolo_label_lines(objects, imgsz)):
            ys, xs = np.nonzero(o.mask)
            x0, y0, x1, y1 = o.box
            assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 1.5 and ys.min() >= y0 - 1.5 and ys.max() <= y1 + 1.5
            assert (x1 - x0) <= xs.max() - xs.min() + 3 and (y1 - y0) <= ys.max() - ys.min() + 3
            # the longest side is at least the smallest size (rasterisation slack; a box cut by the border aside)
            if 0 < x0 and 0 < y0 and x1 < imgsz and y1 < imgsz:
                assert max(x1 - x0, y1 - y0) >= d.min_object(imgsz) * 0.7 - 1
            assert int(line.split()[0]) == o.cls


def test_no_overlap_at_occlusion_zero():
    rng = np.random.default_rng(2)
    d = Difficulty.level(1.0, occlusion=0.0)
    assert d.min_visible == 1.0
    for _ in range(12):
        _, objects = render_image(rng, 96, 6, d)
        drawn = np.sum([o.mask for o in objects], axis=0) if objects else np.zeros(1)
        assert drawn.max() <= 1  # no pixel belongs to two objects


def test_easier_images_are_calmer_and_objects_larger():
    """Along the dial: background noise (mean |Laplacian|) and the smallest objects change the way the knobs say."""
    import cv2

    def roughness(d: Difficulty) -> float:
        rng = np.random.default_rng(0)
        return float(np.mean([np.abs(cv2.Laplacian(cv2.cvtColor(render_image(rng, 96, 6, d)[0], cv2.COLOR_BGR2GRAY),
                                                   cv2.CV_32F)).mean() for _ in range(16)]))

    assert roughness(Difficulty.level(1.0, noise=0.0)) < 0.8 * roughness(Difficulty.level(1.0))
    assert Difficulty.level(0.0).min_object(160) == pytest.approx(160 * 0.11)
    assert Difficulty.level(1.0).min_object(160) == pytest.approx(160 * 0.04)
    assert Difficulty.level(1.0).min_object(64) == 5.0


def test_difficulty_flags(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--imgsz", "64",
                 "--difficulty", "0.25", "--clutter", "0"]) == 0
    header = (out / "data.yaml").read_text().splitlines()[0]
    assert "--clutter 0 --lookalikes 0.25 --blur 0.25 --small 0.25 --occlusion 0.25 --noise 0.25" in header
    for flags in (["--difficulty", "1.5"], ["--blur", "-0.1"]):
        capsys.readouterr()
        assert main(["data", "synth", "--out", str(tmp_path / "bad"), *flags]) == 1
        err = capsys.readouterr().err
        assert "must be between 0 and 1" in err and "Traceback" not in err


# ---- the style: a second domain ------------------------------------------------------------------------------------
def test_textured_style_is_deterministic_and_looks_otherwise(tmp_path):
    import cv2

    kw = dict(n_train=3, n_val=1, n_test=1, imgsz=96, seed=5, difficulty=0.0, progress=False)
    a, b = (generate(tmp_path / x, style="textured", **kw).parent for x in "ab")
    flat = generate(tmp_path / "flat", **kw).parent
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    assert not any(filecmp.cmp(a / f, flat / f, shallow=False) for f in _files(a) if f.suffix == ".png")
    assert "--style textured" in (a / "data.yaml").read_text().splitlines()[0]

    def object_saturation(style: str) -> float:
        """Mean HSV saturation of the pixels objects cover: the textured style's fills are pale."""
        rng = np.random.default_rng(0)
        values = []
        for _ in range(16):
            img, objects = render_image(rng, 96, 6, Difficulty.level(0.0), style)
            sat = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1]
            values += [float(sat[o.mask].mean()) for o in objects]
        return float(np.mean(values))

    # fills drawn at saturation 90-255 (flat) and 20-119 (textured), before noise and the colour cast
    assert object_saturation("textured") < 0.7 * object_saturation("flat")


def test_style_flag(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "t"), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--imgsz", "64",
                 "--style", "textured"]) == 0
    assert "--style textured" in (tmp_path / "t" / "data.yaml").read_text()
    with pytest.raises(UserError, match="--style"):
        generate(tmp_path / "bad", n_train=1, n_val=1, style="night", progress=False)
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--style", "night"]) == 1
    assert capsys.readouterr().err.strip() == ("yolodistill data: error: --style must be one of flat, "
                                               "textured, got 'night'")


def test_unlabeled_pool_has_no_labels_its_own_stream_and_leaves_the_splits_alone(tmp_path):
    import cv2
    import yaml

    root = generate(tmp_path / "u", n_train=3, n_val=2, n_test=2, n_unlabeled=4, imgsz=64, seed=3,
                    progress=False).parent
    pool = sorted((root / "images" / "unlabeled").glob("*.png"))
    assert len(pool) == 4 and not (root / "labels" / "unlabeled").exists()
    assert "unlabeled" not in yaml.safe_load((root / "data.yaml").read_text())  # used only when a run is told to
    plain = generate(tmp_path / "p", n_train=3, n_val=2, n_test=2, imgsz=64, seed=3, progress=False).parent
    assert all(filecmp.cmp(root / f, plain / f, shallow=False) for f in _files(plain))
    seen = {cv2.imread(str(f)).tobytes() for split in ("train", "val", "test")
            for f in (root / "images" / split).glob("*.png")}
    assert not {cv2.imread(str(f)).tobytes() for f in pool} & seen
    child = np.random.SeedSequence(3).spawn(4)[3].spawn(4)[1]
    img, _ = render_image(np.random.default_rng(child), 64, 6)
    assert np.array_equal(cv2.imread(str(pool[1])), img)
