"""`--weights yolov5n.pt` the yolov5 way, offline: a bare name that is not in the working directory is read from the
local weights folder ($YOLODISTILL_WEIGHTS, else the user's cache); a miss says where to put it and where it comes
from, in one line, and nothing is downloaded."""

from __future__ import annotations

import shutil

import pytest

from yolodistill import paths
from yolodistill.checkpoint import CheckpointError, load_checkpoint
from yolodistill.cli import main

from .test_bad_input import BASE, _fails


@pytest.fixture
def weights_folder(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(folder))
    monkeypatch.chdir(tmp_path)  # a working directory without the file
    return folder


def test_the_folder_is_the_variable_else_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.weights_dir() == tmp_path / "cache" / "yolodistill" / "weights"
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(tmp_path / "mine"))
    assert paths.weights_dir() == tmp_path / "mine"


def test_a_bare_name_is_found_in_the_folder_a_path_with_a_folder_is_not(weights_folder, tmp_path):
    (weights_folder / "yolov5n.pt").write_bytes(b"x")
    assert paths.local_weights("yolov5n.pt") == weights_folder / "yolov5n.pt"
    assert paths.local_weights("runs/yolov5n.pt") == paths.Path("runs/yolov5n.pt")  # the user meant that folder
    (tmp_path / "yolov5n.pt").write_bytes(b"y")  # one in the working directory comes first, as in yolov5
    assert paths.local_weights("yolov5n.pt") == paths.Path("yolov5n.pt")


def test_a_missing_release_name_says_where_to_put_it_and_where_it_comes_from(weights_folder):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint("yolov5x.pt")
    message = str(e.value)
    assert "\n" not in message
    assert str(weights_folder) in message and "$YOLODISTILL_WEIGHTS" in message
    assert "https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5x.pt" in message
    with pytest.raises(CheckpointError) as e:  # not a release name: no address to invent
        load_checkpoint("my_detector.pt")
    assert "releases" not in str(e.value) and str(weights_folder) in str(e.value)


def test_train_and_its_teacher_read_pretrained_weights_by_name(capsys, weights_folder, teacher_weights, tiny_data,
                                                               tmp_path):
    shutil.copy(teacher_weights, weights_folder / "teacher.pt")
    shutil.copy(teacher_weights, weights_folder / "yolov5n.pt")
    assert main(["train", *BASE, "--project", str(tmp_path / "runs"), "--name", "x", "--data", str(tiny_data),
                 "--weights", "yolov5n.pt", "--t_weights", "teacher.pt", "--d_output"]) == 0
    assert (tmp_path / "runs" / "x" / "weights" / "last.pt").is_file()


def test_train_with_a_missing_pretrained_name_fails_in_one_line(capsys, weights_folder, tiny_data, tmp_path):
    last = _fails(capsys, ["train", *BASE, "--project", str(tmp_path), "--name", "x", "--data", str(tiny_data),
                           "--weights", "yolov5n.pt"], "yolov5n.pt")
    assert "releases/download/v7.0/yolov5n.pt" in last
