"""`yolodistill data digits`: scikit-learn's real digits as ImageFolder folders with a fixed test split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from yolodistill.cli import main  # noqa: E402


def _names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_digits_folders_split_and_few(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["data", "digits", "--out", str(a), "--few", "5", "--seed", "0"]) == 0
    assert main(["data", "digits", "--out", str(b), "--few", "5", "--seed", "1"]) == 0
    train, val = _names(a / "full" / "train"), _names(a / "full" / "val")
    assert len(train) + len(val) == 1797 and len(val) == 540  # 30% stratified test split
    assert sorted({n.split("/")[0] for n in val}) == [str(d) for d in range(10)]
    assert _names(b / "full" / "val") == val  # the seed never moves the test split
    few = _names(a / "few" / "train")
    assert len(few) == 50 and all(sum(n.startswith(f"{d}/") for n in few) == 5 for d in range(10))
    assert few != _names(b / "few" / "train")  # ... it only picks the labeled few
    unlabeled = _names(a / "unlabeled")
    assert len(unlabeled) + len(few) == len(train)
    assert not {n.split("/")[-1] for n in few} & set(unlabeled)
    img = np.asarray(Image.open(a / "full" / "val" / val[0]))
    assert img.shape == (8, 8, 3) and img.max() > 200  # 0..16 grey levels scaled to 0..255


def test_digits_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    assert main(["data", "digits", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
