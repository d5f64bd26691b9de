"""`yolodistill data digits`: scikit-learn's real digits as ImageFolder folders with fixed val and test splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from yolodistill.cli import main  # noqa: E402

DIGITS = [str(d) for d in range(10)]


def _names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def _image_ids(folder):
    """The dataset indices of a folder's images (their file names), labeled or not."""
    return {p.stem for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The digits written twice with seed 0 and once with seed 1 (5 labels a class)."""
    root = tmp_path_factory.mktemp("digits")
    for name, seed in (("a", 0), ("again", 0), ("b", 1)):
        assert main(["data", "digits", "--out", str(root / name), "--few", "5", "--seed", str(seed)]) == 0
    return root


def test_digits_three_disjoint_stratified_splits(written):
    a = written / "a" / "full"
    train, val, test = (_image_ids(a / split) for split in ("train", "val", "test"))
    # 60 / 20 / 20 of 1,797: val and test 360 each (20%, rounded up), the rest trains
    assert (len(train), len(val), len(test)) == (1077, 360, 360)
    assert not train & val and not train & test and not val & test
    for split in ("train", "val", "test"):
        per_class = [len(list((a / split / d).glob("*.png"))) for d in DIGITS]
        share = np.array(per_class) / sum(per_class)
        assert min(per_class) > 0 and np.all(np.abs(share - 0.1) < 0.01), (split, per_class)  # ~10% each digit


def test_digits_few_shares_val_and_test_and_the_seed_picks_only_the_few(written):
    a, b = written / "a", written / "b"
    for split in ("val", "test"):
        assert _names(a / "few" / split) == _names(a / "full" / split)
        assert _names(b / "full" / split) == _names(a / "full" / split)  # the seed never moves val or test
    few = _names(a / "few" / "train")
    assert len(few) == 50 and all(sum(n.startswith(f"{d}/") for n in few) == 5 for d in range(10))
    assert few != _names(b / "few" / "train")  # ... it only picks the labeled few
    train = _image_ids(a / "full" / "train")
    unlabeled = _image_ids(a / "unlabeled")
    assert _image_ids(a / "few" / "train") | unlabeled == train
    assert not _image_ids(a / "few" / "train") & unlabeled
    img = np.asarray(Image.open(a / "full" / "test" / _names(a / "full" / "test")[0]))
    assert img.shape == (8, 8, 3) and img.max() > 200  # 0..16 grey levels scaled to 0..255


def test_digits_same_seed_same_bytes(written):
    a, again = written / "a", written / "again"
    names = _names(a)
    assert names == _names(again) and len(names) == 1797 + 50 + 2 * 360 + (1077 - 50)
    assert all((a / n).read_bytes() == (again / n).read_bytes() for n in names)


def test_digits_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    assert main(["data", "digits", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
