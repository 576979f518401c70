"""`predict --detect-faces` (issue 20, item 2: photos in the wild) and predict's command line
(item 5: every flag has help, no help cites SPEC, unknown arguments are refused, a run
directory with --which).

The real photograph is scikit-image's `skimage.data.astronaut()` (512x512 RGB, shipped inside
the scikit-image package, which the test extra installs). Where its face lies was read off the
picture by eye, not from the detector: eyes at (202, 100) and (247, 101), mouth at (225, 146),
chin at y 175; cheek to cheek and eyebrows to chin, the face is the box (180, 85, 92, 90).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from test_validation_upfront import save_checkpoint  # the tiny checkpoint, as lnlatten_fast.train writes it

from lnlatten_fast import predict as predict_cli
from lnlatten_fast.data import faces

LEFT_EYE, RIGHT_EYE, MOUTH = (202, 100), (247, 101), (225, 146)
CHIN_Y = 175
FACE_BOX = (180, 85, 92, 90)  # x, y, w, h: cheek to cheek, eyebrows to chin


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    overlap = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return overlap / (aw * ah + bw * bh - overlap)


def contains(box, point) -> bool:
    x, y, w, h = box
    return x <= point[0] < x + w and y <= point[1] < y + h


def quarter(picture: Image.Image) -> np.ndarray:
    """The 512x512 photo's pixels at 128x128, averaged: compares pictures drawn at other sizes."""
    return np.asarray(picture.resize((128, 128), Image.BOX)).astype(float)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture
def astronaut_png(tmp_path, astronaut) -> Path:
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory whose best.pt always says Surprise and whose last.pt always says
    Happiness (tiny 32 px models, saved as lnlatten_fast.train saves them)."""
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "best.pt", favourite=0)
    save_checkpoint(folder / "last.pt", favourite=3)
    return folder


# ---- the detector and the crop -------------------------------------------------------------------
def test_the_face_in_the_astronaut_photograph_is_found(astronaut):
    boxes = faces.detect_faces(astronaut)
    assert len(boxes) == 1, boxes
    box = boxes[0]
    assert all(contains(box, point) for point in (LEFT_EYE, RIGHT_EYE, MOUTH)), box
    assert 60 <= box[2] <= 140 and 60 <= box[3] <= 140, box  # the face is about 92 px wide
    assert iou(box, FACE_BOX) >= 0.5, box


def test_the_face_crop_reaches_the_chin_with_the_eyes_above_the_middle(astronaut):
    """The margin: the Haar box stops above the chin; the crop the model sees holds the whole face."""
    (box,) = faces.detect_faces(astronaut)
    x, y, w, h = faces.face_crop_box(box)
    assert y + h >= CHIN_Y and y <= 85  # eyebrows to chin
    assert 0.3 <= (LEFT_EYE[1] - y) / h <= 0.45
    crop = faces.crop_face(astronaut, box, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8


@pytest.mark.parametrize("scale, corner", [(0.4, (500, 50)), (1.0, (60, 200)), (2.4, (40, 20))])
def test_a_real_face_pasted_into_noise_is_found_where_it_was_put(astronaut, scale, corner):
    """The synthetic cartoon faces (data.synthetic) are mostly not faces to a Haar cascade (it
    fired on 2 of 21 tried), so the pasted face is the astronaut's: her head, scaled, pasted at a
    known place into a frame of uniform noise; the known box is FACE_BOX moved and scaled with it."""
    head_x, head_y = 140, 30
    head = astronaut[head_y:200, head_x:320]
    height, width = round(head.shape[0] * scale), round(head.shape[1] * scale)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x0, y0 = corner
    frame[y0:y0 + height, x0:x0 + width] = np.asarray(Image.fromarray(head).resize((width, height), Image.BILINEAR))
    fx, fy, fw, fh = FACE_BOX
    known = (x0 + (fx - head_x) * scale, y0 + (fy - head_y) * scale, fw * scale, fh * scale)
    boxes = faces.detect_faces(frame)
    assert len(boxes) == 1, boxes
    assert iou(boxes[0], known) >= 0.5, (boxes, known)


def test_a_crop_past_the_photos_edge_repeats_its_edge_pixels():
    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    crop = faces.crop_face(image, (0, 0, 20, 20), 26, margin=0.15)  # the crop box is (-3, -3, 26, 26)
    assert np.array_equal(crop[:3, :3], np.broadcast_to(image[0, 0], (3, 3, 3)))
    assert np.array_equal(crop[3:, 3:], image[:23, :23])


# ---- predict --detect-faces ------------------------------------------------------------------------
def test_predict_detect_faces_writes_the_annotated_photo(astronaut, astronaut_png, run, tmp_path, capsys):
    out = tmp_path / "annotated.png"
    assert predict_cli.main([str(astronaut_png), "--checkpoint", str(run), "--detect-faces", "--heatmap", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{astronaut_png} face 1 of 1 at (x " in printed and f"heat map: {out}" in printed
    with Image.open(out) as picture:
        assert picture.width >= 512 and picture.width == picture.height  # the photo's aspect, at least its size
        drawn = quarter(picture.convert("RGB"))
    photo = quarter(Image.fromarray(astronaut))
    # Away from the face, its label and the colour bar (the lower right fifth), the picture is the photo ...
    assert np.abs(drawn[50:125, :95] - photo[50:125, :95]).mean() < 8
    # ... and on the face the w_g overlay changes it.
    x, y, w, h = (v // 4 for v in faces.face_crop_box(faces.detect_faces(astronaut)[0]))
    assert np.abs(drawn[y + 2:y + h - 2, x + 2:x + w - 2] - photo[y + 2:y + h - 2, x + 2:x + w - 2]).mean() > 15


def test_the_colour_bar_moves_off_a_face_in_the_lower_right_corner():
    lower_right, lower_left = (0.78, 0.02), (0.02, 0.02)
    assert predict_cli.colour_bar_corner([], 800, 500) == pytest.approx(lower_right)
    assert predict_cli.colour_bar_corner([(600, 300, 150, 150)], 800, 500) == pytest.approx(lower_left)


def test_a_photo_without_a_face_gets_one_line_and_the_others_go_on(astronaut_png, run, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300, 3), 180, dtype=np.uint8)).save(blank)
    out = tmp_path / "annotated.png"
    args = [str(blank), str(astronaut_png), "--checkpoint", str(run), "--detect-faces", "--heatmap", str(out)]
    assert predict_cli.main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert lines[0].startswith(f"{blank}: no face found (") and len(lines) == 2
    assert lines[1].startswith(f"{astronaut_png} face 1 of 1 at (x ")
    assert not (tmp_path / "annotated-0.png").exists() and (tmp_path / "annotated-1.png").is_file()


def test_detect_faces_without_opencv_is_one_line(astronaut, astronaut_png, run, monkeypatch, capsys):
    """Fault: OpenCV not installed (`import cv2` fails)."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    faces.face_detector.cache_clear()
    try:
        with pytest.raises(faces.DetectorMissingError):
            faces.detect_faces(astronaut)
        assert predict_cli.main([str(astronaut_png), "--checkpoint", str(run), "--detect-faces"]) == 2
        assert capsys.readouterr().err == (
            "error: --detect-faces needs the detect extra: pip install 'lnlatten_fast[detect]'\n")
    finally:
        faces.face_detector.cache_clear()


# ---- predict's command line ------------------------------------------------------------------------
def test_every_predict_option_has_help_and_none_cites_spec():
    parser = predict_cli.build_parser()
    undocumented = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert undocumented == []
    assert "SPEC" not in parser.format_help()


def test_predict_refuses_an_unknown_argument(capsys):
    with pytest.raises(SystemExit) as stopped:
        predict_cli.main(["face.png", "--checkpoint", "run", "--bogus"])
    assert stopped.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("detect", [False, True])
def test_a_run_directory_gives_its_best_pt_or_with_which_last_its_last_pt(astronaut_png, run, capsys, detect):
    extra = ["--detect-faces"] if detect else []
    assert predict_cli.main([str(astronaut_png), "--checkpoint", str(run), "--top", "1", *extra]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": Surprise 1.000")
    assert predict_cli.main([str(astronaut_png), "--checkpoint", str(run), "--which", "last", "--top", "1", *extra]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": Happiness 1.000")


def test_which_with_a_checkpoint_file_is_refused(astronaut_png, run, capsys):
    assert predict_cli.main([str(astronaut_png), "--checkpoint", str(run / "best.pt"), "--which", "last"]) == 2
    assert capsys.readouterr().err == (
        f"error: --which last: --checkpoint {run / 'best.pt'} is a checkpoint file, not a run directory\n")
