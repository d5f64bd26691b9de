"""The synthetic dataset: deterministic bytes, labels inside the image, boxes that match what was drawn."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from yolodistill.cli import main
from yolodistill.errors import UserError
from yolodistill.synth import CLASS_NAMES, generate, load_objects_for_check, render_image, yolo_label_lines


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "data.yaml")


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", n_train=6, n_val=2, imgsz=96, seed=3, progress=False).parent
    b = generate(tmp_path / "b", n_train=6, n_val=2, imgsz=96, seed=3, progress=False).parent
    c = generate(tmp_path / "c", n_train=6, n_val=2, imgsz=96, seed=4, progress=False).parent
    assert _files(a) == _files(b)
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    assert not all(filecmp.cmp(a / f, c / f, shallow=False) for f in _files(a) if f.suffix == ".png")


def test_labels_in_range_and_inside_image(tmp_path):
    root = generate(tmp_path / "d", n_train=40, n_val=5, imgsz=160, seed=0, progress=False).parent
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
        generate(tmp_path / "full", n_train=1, n_val=1, progress=False)
    generate(tmp_path / "full", n_train=1, n_val=1, exist_ok=True, progress=False)
    for kwargs, msg in (({"imgsz": 8}, "--imgsz"), ({"n_train": 0}, "--n-train"), ({"classes": 9}, "--classes")):
        with pytest.raises(UserError, match=msg):
            generate(tmp_path / "bad", **{"n_train": 1, "n_val": 1, **kwargs}, progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err
