"""Teacher stores: rows come back as written, a failed build leaves nothing that opens, a mismatch names both sides."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from yolodistill.classification.store import STORE_FORMAT, TeacherStore, describe_teacher, write_store
from yolodistill.errors import UserError

TEACHER = {"type": "open_clip", "model": "ViT-B-32", "weights": "model.safetensors", "bytes": 605000000}
KEYS = ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg", "dog/2.jpg"]
# Row i is i + column/10, so any row is recognisable by eye.
VALUES = torch.arange(5, dtype=torch.float32)[:, None] + torch.arange(3, dtype=torch.float32)[None] / 10


def build(out, values=VALUES, keys=KEYS, **kw):
    kw = {"teacher": TEACHER, "kind": "embedding", "progress": False, **kw}
    return write_store(out, keys, values.split(2), **kw)  # batches of 2, 2, 1


def test_round_trip_float32_exact(tmp_path):
    out = build(tmp_path / "emb")
    store = TeacherStore.open(out)
    assert (store.teacher, store.kind, store.dim, len(store)) == (TEACHER, "embedding", 3, 5)
    assert store.keys == tuple(KEYS)
    assert torch.equal(store.lookup(KEYS), VALUES)
    assert torch.equal(store.row(3), torch.tensor([3.0, 3.1, 3.2]))
    index = json.loads((out / "index.json").read_text())
    assert index == {"format": STORE_FORMAT, "teacher": TEACHER, "kind": "embedding", "dim": 3, "count": 5,
                     "dtype": "float32", "source": None, "keys": KEYS}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # no temp folder left beside it


def test_float16_halves_disk_and_reads_back_as_float32(tmp_path):
    store = TeacherStore.open(build(tmp_path / "emb", dtype="float16"))
    assert np.load(tmp_path / "emb" / "values.npy", mmap_mode="r").dtype == np.float16
    rows = store.lookup(KEYS)
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, VALUES, atol=4e-3, rtol=0)  # float16 steps near 4.2 are 1/256


def test_lookup_in_any_order_and_missing(tmp_path):
    store = TeacherStore.open(build(tmp_path / "emb"))
    rows = store.lookup(["dog/2.jpg", "cat/0.jpg", "dog/2.jpg"])
    assert torch.equal(rows, VALUES[[4, 0, 4]])
    assert "dog/1.jpg" in store and "bird/0.jpg" not in store
    assert store.missing(["bird/0.jpg", "cat/1.jpg", "fish/3.jpg"]) == ["bird/0.jpg", "fish/3.jpg"]
    with pytest.raises(UserError, match=r"'bird/0\.jpg' has no row in teacher store .*emb.*classify embed"):
        store.lookup(["cat/0.jpg", "bird/0.jpg"])


def test_rows_found_once_then_taken_per_batch(tmp_path):
    store = TeacherStore.open(build(tmp_path / "emb"))
    rows = store.rows_of(["dog/2.jpg", "cat/0.jpg"])
    assert rows == [4, 0]
    assert torch.equal(store.take(torch.tensor(rows + [4])), VALUES[[4, 0, 4]])
    with pytest.raises(UserError, match="'bird/0.jpg' has no row"):
        store.rows_of(["bird/0.jpg"])


def test_logits_kind_and_bad_arguments(tmp_path):
    store = TeacherStore.open(build(tmp_path / "logits", kind="logits"))
    assert store.kind == "logits"
    with pytest.raises(ValueError, match="kind"):
        build(tmp_path / "a", kind="features")
    with pytest.raises(ValueError, match="dtype"):
        build(tmp_path / "b", dtype="int8")
    with pytest.raises(UserError, match="'cat/0.jpg' appears more than once"):
        build(tmp_path / "c", keys=["cat/0.jpg", "cat/1.jpg", "cat/0.jpg", "x", "y"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("rows", [4, 6])
def test_count_mismatch(tmp_path, rows):
    values = torch.zeros(rows, 3)
    with pytest.raises(ValueError, match="5"):
        build(tmp_path / "emb", values=values)
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_that_opens(tmp_path):
    def batches():
        yield VALUES[:2]
        raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        write_store(tmp_path / "emb", KEYS, batches(), teacher=TEACHER, kind="embedding", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no teacher store at .*emb"):
        TeacherStore.open(tmp_path / "emb")


def test_existing_folder_refused_unless_exist_ok(tmp_path):
    out = build(tmp_path / "emb")
    with pytest.raises(UserError, match="already exists and is not empty"):
        build(out, values=VALUES * 0)
    assert torch.equal(TeacherStore.open(out).lookup(KEYS), VALUES)

    def failing():
        yield VALUES[:2] * 0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a failed rebuild keeps the old store whole
        write_store(out, KEYS, failing(), teacher=TEACHER, kind="embedding", exist_ok=True, progress=False)
    assert torch.equal(TeacherStore.open(out).lookup(KEYS), VALUES)

    build(out, values=VALUES * 2, exist_ok=True)
    assert torch.equal(TeacherStore.open(out).lookup(KEYS), VALUES * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # the old store is gone, not set aside

    (tmp_path / "empty").mkdir()
    build(tmp_path / "empty")  # an empty folder is not a store to protect
    assert len(TeacherStore.open(tmp_path / "empty")) == 5


def test_mismatch_names_both_sides(tmp_path):
    out = build(tmp_path / "emb")
    TeacherStore.open(out, teacher=dict(TEACHER), dim=3, kind="embedding")  # what it was built with: accepted
    other = {**TEACHER, "model": "ViT-L-14"}
    with pytest.raises(UserError) as e:
        TeacherStore.open(out, teacher=other, dim=768)
    assert str(e.value) == (f"store {out} was built by open_clip ViT-B-32 (model.safetensors), dim 3, not by "
                            "open_clip ViT-L-14 (model.safetensors), dim 768: "
                            "rebuild it with `yolodistill classify embed`")
    with pytest.raises(UserError, match="built by embedding, not by logits"):
        TeacherStore.open(out, kind="logits")
    with pytest.raises(UserError, match="built by dim 3, not by dim 4"):
        TeacherStore.open(out, dim=4)
    with pytest.raises(UserError, match='"bytes": 605000000.*not by.*"bytes": 1'):  # same short name: full entries
        TeacherStore.open(out, teacher={**TEACHER, "bytes": 1})


def test_float16_overflow_refused(tmp_path):
    logits = VALUES.clone()
    logits[3, 1] = 1e5  # beyond float16's largest finite value, 65504
    with pytest.raises(UserError, match="'dog/1.jpg' is not finite as float16; use float32"):
        build(tmp_path / "logits", values=logits, kind="logits", dtype="float16")
    assert list(tmp_path.iterdir()) == []
    build(tmp_path / "logits", values=logits, kind="logits")  # float32 holds it


def test_describe_teacher():
    assert describe_teacher(TEACHER) == "open_clip ViT-B-32 (model.safetensors)"
    assert describe_teacher({"type": "timm", "model": "resnet50"}) == "timm resnet50"


def test_corrupt_index_refused(tmp_path):
    out = build(tmp_path / "emb")
    index = out / "index.json"
    good = json.loads(index.read_text())
    cases = {"{not json": "unreadable or corrupt", "[1, 2]": "not a JSON object",
             json.dumps({**good, "format": 99}): "format 99",
             json.dumps({**good, "count": 4}): "count 4 but 5 keys",
             json.dumps({**good, "keys": KEYS[:4] + KEYS[:1]}): "duplicate keys",
             json.dumps({k: v for k, v in good.items() if k != "dim"}): "bad or missing dim"}
    for text, reason in cases.items():
        index.write_text(text)
        with pytest.raises(UserError, match=f"{reason}.*classify embed"):
            TeacherStore.open(out)
    index.unlink()
    with pytest.raises(UserError, match="no index.json"):
        TeacherStore.open(out)


def test_damaged_values_refused(tmp_path):
    out = build(tmp_path / "emb")
    values = out / "values.npy"
    data = values.read_bytes()
    values.write_bytes(data[:-8])  # truncated: the last row is short
    with pytest.raises(UserError, match="values.npy is unreadable.*classify embed"):
        TeacherStore.open(out)
    np.save(values, np.zeros((5, 4), np.float32))  # a whole file, but not the shape the index says
    with pytest.raises(UserError, match=r"\(5, 4\).*index says float32 \(5, 3\)"):
        TeacherStore.open(out)
    values.unlink()
    with pytest.raises(UserError, match="unreadable"):
        TeacherStore.open(out)


def test_pickles_without_the_map(tmp_path):
    store = TeacherStore.open(build(tmp_path / "emb"))
    assert store._values is None  # opened lazily
    store.lookup(KEYS[:1])
    assert store._values is not None
    blob = pickle.dumps(store)
    assert VALUES[1:].numpy().tobytes() not in blob  # the rows are not copied into the pickle
    clone = pickle.loads(blob)
    assert clone._values is None
    assert torch.equal(clone.lookup(KEYS[::-1]), VALUES.flip(0))
