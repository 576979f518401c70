"""Entries named like images that are not readable image files: symlink loops, dangling links,
directories named like images, pipes and unreadable files, in every reader alike.

A folder walk leaves them out, counts them and lists them with the reason in the images'
`skipped` (RUN_DIR/skipped.txt; fatal with `strict`); a listing (manifest, label list, CSV)
that names one is an error naming the listing's file and line.

Faults (issue 19): a manifest whose image folder held a symlink loop it did not list failed
with "[Errno 40] Too many levels of symbolic links", naming neither the manifest nor a line; a
manifest row naming a directory said "pass check_files=False" (a library name) instead of
the manifest and line.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import small_settings

from lnlatten_fast.data import datasets
from lnlatten_fast.data.images import ImageDecodeError
from lnlatten_fast.data.sources import load_split
from lnlatten_fast.training.trainer import train


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), 90, dtype=np.uint8)).save(path)


def _broken_entries(folder):
    """One of each entry named like an image that is not a readable image file, by reason."""
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("loop.png", folder / "loop.png")
    os.symlink(folder / "nowhere.png", folder / "gone.png")
    (folder / "dir.jpg").mkdir()
    os.mkfifo(folder / "pipe.png")
    return {
        str(folder / "loop.png"): "is a symbolic link loop",
        str(folder / "gone.png"): "is a symbolic link to nothing",
        str(folder / "dir.jpg"): "is a directory",
        str(folder / "pipe.png"): "is not a regular file (a pipe, socket or device)",
    }


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    path.write_text("path,label,split\n" + "".join(f"{row}\n" for row in rows))
    return path


def _face_folder(root):
    """root/{train,test}/<Class>/0.png for two classes, and the broken entries in train/Happiness."""
    for split in ("train", "test"):
        for name in ("Happiness", "Sadness"):
            _image(root / split / name / "0.png")
    os.symlink("loop", root / "train" / "loop")  # a loop where class folders are: not one of them
    return _broken_entries(root / "train" / "Happiness")


# ---- listings: an error naming the listing and line -----------------------------------------------
def test_an_unlisted_symlink_loop_beside_a_manifests_images_is_not_read(tmp_path):
    _image(tmp_path / "img" / "a.png")
    _broken_entries(tmp_path / "img")
    samples = datasets.read_dataset("manifest", _manifest(tmp_path, ["img/a.png,happy,train"]), "all")
    assert [s.path.name for s in samples] == ["a.png"] and samples.skipped == []


@pytest.mark.parametrize("entry", ["loop.png", "gone.png", "dir.jpg", "pipe.png", "missing.png"])
def test_a_listed_entry_that_is_not_an_image_file_names_the_manifest_and_line(tmp_path, entry):
    _image(tmp_path / "img" / "a.png")
    reasons = {os.path.basename(path): reason for path, reason in _broken_entries(tmp_path / "img").items()}
    path = _manifest(tmp_path, ["img/a.png,happy,train", f"img/{entry},sad,train"])
    reason = reasons.get(entry, "does not exist")
    message = f"{path}, line 3: expected an image file at {tmp_path / 'img' / entry}, which {reason}"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$") as caught:
        datasets.read_dataset("manifest", path, "all")
    assert "check_files" not in str(caught.value)


def test_a_listed_unreadable_file_names_the_manifest_and_line(tmp_path, monkeypatch):
    """Tests run as root, who reads every file: os.access stands in for the permission bits."""
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "locked.png")
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("locked.png"))
    path = _manifest(tmp_path, ["img/a.png,happy,train", "img/locked.png,sad,train"])
    with pytest.raises(FileNotFoundError, match=rf"^{path}, line 3: .*locked.png, which cannot be read"):
        datasets.read_dataset("manifest", path, "all")


def test_the_command_line_names_the_manifest_line_of_a_listed_directory(tmp_path):
    _image(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "faces").mkdir()
    path = _manifest(tmp_path, ["img/a.png,happy,train", "img/faces,sad,test"])
    result = subprocess.run([sys.executable, "-m", "lnlatten_fast.train", "--dataset", "manifest", "--data-root",
                             str(path), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}, line 3: expected an image file at {tmp_path / 'img' / 'faces'}, which is a directory")


# ---- folder walks: left out, counted, listed with the reason ----------------------------------------
def test_a_folder_walk_leaves_out_counts_and_lists_each_entry_with_its_reason(tmp_path, capsys):
    expected = _face_folder(tmp_path / "faces")
    samples = datasets.read_dataset("folder", tmp_path / "faces", "train")
    assert sorted(s.path.name for s in samples) == ["0.png", "0.png"]
    assert {item["path"]: item["reason"] for item in samples.skipped} == expected
    assert ("ignored 1 dangling links, 1 directories named like images, 1 special files, 1 symlink loops"
            in capsys.readouterr().err)


def test_the_other_folder_readers_leave_them_out_alike(tmp_path):
    _image(tmp_path / "sfew" / "Train" / "Happy" / "0.png")
    _image(tmp_path / "sfew" / "Val" / "Happy" / "0.png")
    expected = _broken_entries(tmp_path / "sfew" / "Train" / "Happy")
    samples = datasets.read_dataset("sfew", tmp_path / "sfew", "train")
    assert len(samples) == 1 and {item["path"]: item["reason"] for item in samples.skipped} == expected


def test_an_unreadable_file_in_a_folder_is_left_out_with_its_reason(tmp_path, monkeypatch):
    _image(tmp_path / "faces" / "Happiness" / "0.png")
    _image(tmp_path / "faces" / "Happiness" / "locked.png")
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("locked.png"))
    samples = datasets.read_folder(tmp_path / "faces", "all")
    assert [s.path.name for s in samples] == ["0.png"]
    assert samples.skipped == [{"path": str(tmp_path / "faces" / "Happiness" / "locked.png"),
                                "reason": "cannot be read (permission denied)"}]


def test_a_run_lists_them_in_skipped_txt_or_stops_with_strict(tmp_path):
    expected = _face_folder(tmp_path / "faces")
    settings = small_settings(tmp_path / "run", dataset="folder", data_root=str(tmp_path / "faces"), epochs=1,
                              batch_size=2, synthetic_train=None, synthetic_test=None)
    train(settings)
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    assert listed == expected
    with pytest.raises(ImageDecodeError, match=rf"^cannot decode image {tmp_path / 'faces' / 'train' / 'Happiness'}"
                                               r"/dir.jpg: is a directory$"):
        load_split("folder", "train", 32, tmp_path / "faces", tmp_path / "cache", strict=True)


def test_a_rafdb_label_list_without_its_images_names_the_folders_not_a_library_argument(tmp_path):
    """Before: the message told a command-line user to "pass check_files=False", an argument of
    the library that no flag reaches."""
    (tmp_path / "list_patition_label.txt").write_text("train_00001.jpg 5\ntest_0001.jpg 1\n")
    with pytest.raises(FileNotFoundError) as raised:
        datasets.read_dataset("rafdb", tmp_path, "train")
    message = str(raised.value)
    assert "check_files" not in message
    assert str(tmp_path / "Image" / "aligned") in message and str(tmp_path / "Image" / "original") in message
