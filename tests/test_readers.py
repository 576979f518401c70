"""Dataset readers: fake trees for every layout, labels checked against each dataset's documented
code → canonical map (expected labels written by hand, never computed by the code under test),
split handling, CK+ frame logic, subject folds, errors, and the real RAF-DB label list."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from lnlatten_fast.data import datasets, labels, splits
from lnlatten_fast.data.datasets import Sample

# Canonical: 0 Surprise, 1 Fear, 2 Disgust, 3 Happiness, 4 Sadness, 5 Anger, 6 Neutral.
SUR, FEA, DIS, HAP, SAD, ANG, NEU = range(7)

REAL_RAFDB = Path(__file__).resolve().parents[2] / "shared/data/rafdb/list_patition_label.txt"


def img(path: Path, size=(6, 5), value: int = 128) -> Path:
    """A tiny real image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_name(samples):
    return {s.path.name: s for s in samples}


# ---------------------------------------------------------------------------------- basics


def test_class_names_are_rafdb_order():
    assert labels.CLASS_NAMES == ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    assert labels.CLASS_NAMES_8[7] == "Contempt"


def test_sample_validation(tmp_path):
    s = Sample(3, path=str(tmp_path / "a.png"))
    assert isinstance(s.path, Path) and s.class_name == "Happiness"
    Sample(0, pixels=np.zeros((4, 4), np.uint8))
    Sample(0, pixels=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        Sample(0)
    with pytest.raises(ValueError, match="exactly one"):
        Sample(0, path=tmp_path, pixels=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        Sample(8, path=tmp_path)
    with pytest.raises(TypeError):
        Sample(0, pixels=np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        Sample(0, pixels=np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        Sample(0, path=tmp_path, box=(0, 0, 0, 5))
    with pytest.raises(Exception):
        s.label = 2  # frozen


@pytest.mark.parametrize(
    "name,label",
    [("Angry", ANG), ("anger", ANG), ("HAPPY", HAP), ("happiness", HAP), ("sad", SAD), ("Sadness", SAD),
     ("surprised", SUR), ("Surprise", SUR), ("fearful", FEA), ("fear", FEA), ("disgusted", DIS),
     ("Disgust", DIS), ("neutral", NEU), ("0", SUR), ("6", NEU), (" 3 ", HAP)],
)
def test_parse_class_name(name, label):
    assert labels.parse_class_name(name) == label


@pytest.mark.parametrize("name", ["contempt", "7", "-1", "", "happyish"])
def test_parse_class_name_rejects(name):
    with pytest.raises(ValueError, match="unknown class"):
        labels.parse_class_name(name)


# ---------------------------------------------------------------------------------- RAF-DB

# RAF-DB codes: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAF_LINES = {
    "train_00001.jpg": (5, SAD),
    "train_00002.jpg": (1, SUR),
    "train_00003.jpg": (4, HAP),
    "train_00004.jpg": (7, NEU),
    "train_00005.jpg": (2, FEA),
    "test_0001.jpg": (3, DIS),
    "test_0002.jpg": (6, ANG),
}


def make_rafdb(root: Path, aligned=True, images=True, extra_lines="") -> Path:
    lines = [f"{n} {code}" for n, (code, _) in RAF_LINES.items()]
    write(root / "EmoLabel" / "list_patition_label.txt", "\n".join(lines) + "\n\n" + extra_lines)
    if images:
        for n in RAF_LINES:
            stem = n[:-4]
            if aligned:
                img(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
            else:
                img(root / "Image" / "original" / n)
    return root


def test_rafdb_aligned_labels_and_splits(tmp_path):
    root = make_rafdb(tmp_path / "raf")
    train = datasets.read_rafdb(root, "train")
    test = datasets.read_rafdb(root, "test")
    both = datasets.read_rafdb(root, "all")
    assert len(train) == 5 and len(test) == 2 and len(both) == 7
    assert {s.split for s in train} == {"train"} and {s.split for s in test} == {"test"}
    got = {s.path.name: s.label for s in both}
    expected = {f"{n[:-4]}_aligned.jpg": lab for n, (_, lab) in RAF_LINES.items()}
    assert got == expected
    for s in both:
        assert s.path.parent == root / "Image" / "aligned"
        assert s.path.is_file() and s.pixels is None and s.subject is None and s.box is None


def test_rafdb_original_fallback_and_file_root(tmp_path):
    root = make_rafdb(tmp_path / "raf", aligned=False)
    test = datasets.read_rafdb(root, "test")
    assert {s.path.name: s.label for s in test} == {"test_0001.jpg": DIS, "test_0002.jpg": ANG}
    assert all(s.path.parent == root / "Image" / "original" for s in test)
    # root may be the label file itself
    again = datasets.read_rafdb(root / "EmoLabel" / "list_patition_label.txt", "test")
    assert [s.path for s in again] == [s.path for s in test]


def test_rafdb_check_files(tmp_path):
    root = make_rafdb(tmp_path / "raf", images=False)
    with pytest.raises(FileNotFoundError, match="Image"):
        datasets.read_rafdb(root, "train")
    assert len(datasets.read_rafdb(root, "train", check_files=False)) == 5
    # one image missing: the error names it
    make_rafdb(root)
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").unlink()
    assert len(datasets.read_rafdb(root, "train")) == 5
    with pytest.raises(FileNotFoundError, match="test_0002_aligned.jpg"):
        datasets.read_rafdb(root, "test")


def test_rafdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_patition_label.txt"):
        datasets.read_rafdb(tmp_path, "train")
    root = make_rafdb(tmp_path / "a", images=False, extra_lines="train_00009.jpg 8\n")
    with pytest.raises(ValueError, match=r"line 9"):  # 7 entries, one blank line, then the bad one
        datasets.read_rafdb(root, "train", check_files=False)
    root = make_rafdb(tmp_path / "b", images=False, extra_lines="val_00001.jpg 3\n")
    with pytest.raises(ValueError, match=r"line 9.*train_"):
        datasets.read_rafdb(root, "all", check_files=False)
    root = make_rafdb(tmp_path / "c", images=False, extra_lines="train_00010.jpg\n")
    with pytest.raises(ValueError, match=r"line 9"):
        datasets.read_rafdb(root, "all", check_files=False)
    with pytest.raises(ValueError, match="split"):
        datasets.read_rafdb(root, "val", check_files=False)


real_rafdb = pytest.mark.skipif(
    not REAL_RAFDB.is_file(), reason=f"real RAF-DB label list absent at {REAL_RAFDB}"
)


@real_rafdb
def test_real_rafdb_label_list():
    train = datasets.read_rafdb(REAL_RAFDB, "train", check_files=False)
    test = datasets.read_rafdb(REAL_RAFDB, "test", check_files=False)
    assert len(train) == 12271
    assert len(test) == 3068
    counts = Counter(s.label for s in train + test)
    # RAF-DB labels 1..7 = 1619, 355, 877, 5957, 2460, 867, 3204 → canonical 0..6 (code - 1)
    assert [counts[c] for c in range(7)] == [1619, 355, 877, 5957, 2460, 867, 3204]
    assert len(datasets.read_rafdb(REAL_RAFDB, "all", check_files=False)) == 12271 + 3068
    first = train[0]
    assert first.path.name == "train_00001.jpg" and first.label == SAD  # "train_00001.jpg 5"


# ---------------------------------------------------------------------------------- AffectNet

AFF_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
)
LMK = "1.5;2.5;3.5;4.5"
# file → (expression code, canonical 7-class label or None = dropped, canonical 8-class label)
AFF_TRAIN = {
    "1/a0.jpg": (0, NEU, NEU),
    "1/a1.jpg": (1, HAP, HAP),
    "1/a2.jpg": (2, SAD, SAD),
    "2/a3.jpg": (3, SUR, SUR),
    "2/a4.jpg": (4, FEA, FEA),
    "2/a5.jpg": (5, DIS, DIS),
    "3/a6.jpg": (6, ANG, ANG),
    "3/a7.jpg": (7, None, 7),  # contempt
    "3/a8.jpg": (8, None, None),  # none
    "3/a9.jpg": (9, None, None),  # uncertain
    "3/a10.jpg": (10, None, None),  # non-face
}
AFF_VAL = {"4/v0.jpg": (6, ANG, ANG), "4/v1.jpg": (7, None, 7), "4/v2.jpg": (3, SUR, SUR)}


def aff_rows(table, header=True):
    rows = [AFF_HEADER] if header else []
    for i, (rel, (code, _, _)) in enumerate(table.items()):
        rows.append(f"{rel},{10 + i},{20 + i},{100 + i},{110 + i},{LMK},{code},0.5,-0.25\n")
    return "".join(rows)


def make_affectnet(root: Path, under_mai=True, val_header=True) -> Path:
    write(root / "training.csv", aff_rows(AFF_TRAIN))
    write(root / "validation.csv", aff_rows(AFF_VAL, header=val_header))
    base = root / "Manually_Annotated_Images" if under_mai else root
    for rel in list(AFF_TRAIN) + list(AFF_VAL):
        img(base / rel)
    return root


@pytest.mark.parametrize("num_classes", [7, 8])
def test_affectnet_labels(tmp_path, num_classes):
    root = make_affectnet(tmp_path / "aff")
    col = 1 if num_classes == 7 else 2
    for split, table in (("train", AFF_TRAIN), ("test", AFF_VAL)):
        got = datasets.read_affectnet(root, split, num_classes=num_classes)
        expected = {rel: v[col] for rel, v in table.items() if v[col] is not None}
        assert {str(s.path.relative_to(root / "Manually_Annotated_Images")): s.label for s in got} == expected
        assert {s.split for s in got} == {split}
    n_all = len(datasets.read_affectnet(root, "all", num_classes=num_classes))
    assert n_all == (7 + 2 if num_classes == 7 else 8 + 3)


def test_affectnet_box_root_fallback_and_headerless_val(tmp_path):
    root = make_affectnet(tmp_path / "aff", under_mai=False, val_header=False)
    train = by_name(datasets.read_affectnet(root, "train"))
    assert train["a0.jpg"].box == (10, 20, 100, 110)
    assert train["a6.jpg"].box == (16, 26, 106, 116)
    assert train["a6.jpg"].path == root / "3" / "a6.jpg"
    val = datasets.read_affectnet(root, "test")
    assert [(s.path.name, s.label) for s in val] == [("v0.jpg", ANG), ("v2.jpg", SUR)]


def test_affectnet_errors(tmp_path):
    root = make_affectnet(tmp_path / "aff")
    with pytest.raises(ValueError, match="num_classes"):
        datasets.read_affectnet(root, "train", num_classes=6)
    (root / "Manually_Annotated_Images" / "2" / "a4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a4.jpg"):
        datasets.read_affectnet(root, "train")
    assert len(datasets.read_affectnet(root, "train", check_files=False)) == 7
    (root / "validation.csv").unlink()
    with pytest.raises(FileNotFoundError, match="validation.csv"):
        datasets.read_affectnet(root, "test")
    bad = tmp_path / "bad"
    rows = f"1/a.jpg,1,2,3,4,{LMK},1,0,0\n1/b.jpg,1,2,3,4,{LMK},happy,0,0\n"
    write(bad / "training.csv", AFF_HEADER + rows)
    with pytest.raises(ValueError, match=r"line 3.*expression"):
        datasets.read_affectnet(bad, "train", check_files=False)
    write(bad / "training.csv", AFF_HEADER + f"1/a.jpg,1,2,3,4,{LMK},11,0,0\n")
    with pytest.raises(ValueError, match=r"line 2"):
        datasets.read_affectnet(bad, "train", check_files=False)
    write(bad / "training.csv", AFF_HEADER + f"1/a.jpg,1,2,3,4,{LMK},1,0,0\n1/b.jpg,1,2,0,4,{LMK},1,0,0\n")
    with pytest.raises(ValueError, match=r"line 3.*face_width"):
        datasets.read_affectnet(bad, "train", check_files=False)


def test_class_balanced_weights():
    p = Path("x.png")
    samples = [Sample(HAP, path=p)] * 3 + [Sample(SAD, path=p)]
    w = splits.class_balanced_weights(samples)
    # N / (C * n_y): 4 / (2 * 3) for the three Happiness, 4 / (2 * 1) for the Sadness
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert splits.class_balanced_weights([]).shape == (0,)


# ---------------------------------------------------------------------------------- SFEW


def test_sfew(tmp_path):
    root = tmp_path / "sfew"
    expected_train = {
        "an.png": ANG, "di.jpg": DIS, "fe.png": FEA, "ha.jpg": HAP,
        "ne.png": NEU, "sa.png": SAD, "su.png": SUR,
    }
    folders = {
        "an.png": "Angry", "di.jpg": "Disgust", "fe.png": "Fear", "ha.jpg": "happy", "ne.png": "NEUTRAL",
        "sa.png": "Sad", "su.png": "Surprise",
    }
    for f, cls in folders.items():
        img(root / "Train" / cls / f)
    write(root / "Train" / "Angry" / "notes.txt", "not an image")
    img(root / "Val" / "Sad" / "v1.png")
    img(root / "Val" / "Happy" / "v2.jpg")
    train = datasets.read_sfew(root, "train")
    assert {s.path.name: s.label for s in train} == expected_train
    assert {s.split for s in train} == {"train"}
    test = datasets.read_sfew(root, "test")
    assert {s.path.name: s.label for s in test} == {"v1.png": SAD, "v2.jpg": HAP}
    assert {s.split for s in test} == {"test"}
    assert len(datasets.read_sfew(root, "all")) == 9


def test_sfew_errors(tmp_path):
    root = tmp_path / "sfew"
    img(root / "Train" / "Angry" / "a.png")
    with pytest.raises(FileNotFoundError, match="Val"):
        datasets.read_sfew(root, "test")
    img(root / "Train" / "Contempt" / "c.png")
    with pytest.raises(ValueError, match="Contempt"):
        datasets.read_sfew(root, "train")


# ---------------------------------------------------------------------------------- CK+


def make_ckplus(root: Path) -> Path:
    """S005/001 disgust (3 frames), S005/002 unlabelled, S010/001 contempt, S010/002 happy
    (4 frames), S011/001 surprise (2 frames)."""
    seqs = {
        ("S005", "001", 3): "   3.0000000e+00\n",
        ("S005", "002", 3): None,
        ("S010", "001", 5): "   2.0000000e+00\n",
        ("S010", "002", 4): "   5.0000000e+00\n",
        ("S011", "001", 2): "   7.0000000e+00\n",
    }
    for (subj, seq, n), emo in seqs.items():
        for i in reversed(range(1, n + 1)):  # created out of order on purpose
            img(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{i:08d}.png")
        (root / "Emotion" / subj / seq).mkdir(parents=True, exist_ok=True)
        if emo is not None:
            write(root / "Emotion" / subj / seq / f"{subj}_{seq}_{n:08d}_emotion.txt", emo)
    write(root / "cohn-kanade-images" / "S005" / "001" / ".DS_Store", "")
    return root


def test_ckplus_first_last_and_contempt(tmp_path):
    root = make_ckplus(tmp_path / "ck")
    got = [(s.path.name, s.label, s.subject, s.split) for s in datasets.read_ckplus(root)]
    assert got == [
        ("S005_001_00000001.png", NEU, "S005", None),
        ("S005_001_00000003.png", DIS, "S005", None),
        ("S010_002_00000001.png", NEU, "S010", None),
        ("S010_002_00000004.png", HAP, "S010", None),
        ("S011_001_00000001.png", NEU, "S011", None),
        ("S011_001_00000002.png", SUR, "S011", None),
    ]


def test_ckplus_errors(tmp_path):
    root = make_ckplus(tmp_path / "ck")
    with pytest.raises(ValueError, match="kfold_by_subject"):
        datasets.read_ckplus(root, "train")
    write(root / "Emotion" / "S011" / "001" / "S011_001_00000002_emotion.txt", "surprise\n")
    with pytest.raises(ValueError, match="S011_001_00000002_emotion.txt"):
        datasets.read_ckplus(root)
    write(root / "Emotion" / "S011" / "001" / "S011_001_00000002_emotion.txt", "9.0\n")
    with pytest.raises(ValueError, match="S011_001_00000002_emotion.txt"):
        datasets.read_ckplus(root)
    write(root / "Emotion" / "S012" / "001" / "S012_001_00000002_emotion.txt", "1.0\n")
    write(root / "Emotion" / "S011" / "001" / "S011_001_00000002_emotion.txt", "7.0\n")
    with pytest.raises(FileNotFoundError, match="S012"):
        datasets.read_ckplus(root)
    with pytest.raises(FileNotFoundError, match="cohn-kanade-images"):
        datasets.read_ckplus(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------- FER2013

# FER2013 codes: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
# row i: (emotion code, Usage, canonical label); its pixels are all equal to 10 * i.
FER_ROWS = [
    (0, "Training", ANG),
    (1, "Training", DIS),
    (2, "Training", FEA),
    (3, "PublicTest", HAP),
    (4, "PublicTest", SAD),
    (5, "PrivateTest", SUR),
    (6, "PrivateTest", NEU),
    (3, "Training", HAP),
    (6, "PrivateTest", NEU),
]


def fer_csv(path: Path, rows=FER_ROWS, bad_row: str | None = None) -> Path:
    lines = ["emotion,pixels,Usage"]
    for i, (code, usage, _) in enumerate(rows):
        lines.append(f"{code},{' '.join([str(10 * i)] * 2304)},{usage}")
    if bad_row is not None:
        lines.append(bad_row)
    return write(path, "\n".join(lines) + "\n")


def test_fer2013_labels_splits_pixels(tmp_path):
    path = fer_csv(tmp_path / "fer" / "fer2013.csv")
    expect = {"train": [(0, ANG), (1, DIS), (2, FEA), (7, HAP)], "val": [(3, HAP), (4, SAD)],
              "test": [(5, SUR), (6, NEU), (8, NEU)]}
    for split, pairs in expect.items():
        got = datasets.read_fer2013(path, split)
        assert [(int(s.pixels[0, 0]) // 10, s.label) for s in got] == pairs
        assert all(s.split == split and s.path is None for s in got)
        assert all(s.pixels.shape == (48, 48) and s.pixels.dtype == np.uint8 for s in got)
        assert all((s.pixels == s.pixels[0, 0]).all() for s in got)
    assert len(datasets.read_fer2013(path.parent, "all")) == 9  # directory root works too


def test_fer2013_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fer2013.csv"):
        datasets.read_fer2013(tmp_path, "train")


@pytest.mark.parametrize("bad_row,split,message", [
    (f"3,{' '.join(['1'] * 2303)},Training", "train", r"line 11.*2304"),  # one pixel short
    (f"3,{' '.join(['256'] * 2304)},Training", "train", r"line 11"),  # pixel past 255
    (f"3,{' '.join(['x'] * 2304)},Training", "train", r"line 11"),  # not a number
    (f"3,{' '.join(['1'] * 2304)},Validation", "all", r"line 11.*Usage"),  # unknown usage
    (f"7,{' '.join(['1'] * 2304)},Training", "train", r"line 11.*emotion"),  # unknown emotion
])
def test_fer2013_bad_rows_name_the_line(tmp_path, bad_row, split, message):
    path = fer_csv(tmp_path / "bad.csv", bad_row=bad_row)
    with pytest.raises(ValueError, match=message):
        datasets.read_fer2013(path, split)


# ---------------------------------------------------------------------------------- FERPlus

PLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# votes: neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
# → canonical label, or None = dropped
PLUS_ROWS = [
    ("Training", "fer0000000.png", "0,10,0,0,0,0,0,0,0,0", HAP),
    ("Training", "fer0000001.png", "6,2,0,1,0,0,0,1,0,0", NEU),
    ("Training", "fer0000002.png", "2,0,0,0,0,0,0,7,1,0", None),  # contempt wins
    ("PublicTest", "fer0000003.png", "0,0,0,4,4,0,0,2,0,0", None),  # sadness/anger tie
    ("PublicTest", "fer0000004.png", "1,0,0,0,0,0,0,0,8,1", None),  # unknown wins
    ("PrivateTest", "fer0000005.png", "0,0,0,0,0,0,0,0,0,10", None),  # NF wins
    ("PrivateTest", "", "0,0,10,0,0,0,0,0,0,0", None),  # empty image name
    ("Training", "fer0000007.png", "0,0,1,0,0,0,7,0,2,0", FEA),
    ("PrivateTest", "fer0000008.png", "0,0,5,0,0,0,0,5,0,0", None),  # surprise/contempt tie
    ("PrivateTest", "fer0000009.png", "0,1,1,0,6,2,0,0,0,0", ANG),
    ("PublicTest", "fer0000010.png", "0,0,7,1,0,0,0,0,0,0", SUR),
    ("Training", "fer0000011.png", "0,0,0,2,0,8,0,0,0,0", DIS),
    ("Training", "fer0000012.png", "1,0,0,9,0,0,0,0,0,0", SAD),
]


def make_ferplus(root: Path, drop_last_plus=False):
    # fer2013 emotions deliberately disagree with FERPlus: labels must come from the votes
    fer_csv(root / "fer2013.csv", rows=[(0, usage, None) for usage, *_ in PLUS_ROWS])
    rows = PLUS_ROWS[:-1] if drop_last_plus else PLUS_ROWS
    write(root / "fer2013new.csv", "\n".join([PLUS_HEADER] + [f"{u},{n},{v}" for u, n, v, _ in rows]) + "\n")
    return root


def test_ferplus_majority_vote(tmp_path):
    root = make_ferplus(tmp_path / "fp")
    expect = {
        "train": [(0, HAP), (1, NEU), (7, FEA), (11, DIS), (12, SAD)],
        "val": [(10, SUR)],
        "test": [(9, ANG)],
    }
    for split, pairs in expect.items():
        got = datasets.read_ferplus(root / "fer2013.csv", root / "fer2013new.csv", split)
        assert [(int(s.pixels[0, 0]) // 10, s.label) for s in got] == pairs  # pixels of the aligned row
        assert all(s.split == split and s.pixels.shape == (48, 48) for s in got)
    assert len(datasets.read_dataset("ferplus", root, "all")) == 7


def test_ferplus_errors(tmp_path):
    root = make_ferplus(tmp_path / "fp", drop_last_plus=True)
    with pytest.raises(ValueError, match="aligned"):
        datasets.read_ferplus(root / "fer2013.csv", root / "fer2013new.csv", "train")
    root = make_ferplus(tmp_path / "fp2")
    text = (root / "fer2013new.csv").read_text().replace("fer0000007.png,0,0,1", "fer0000007.png,0,x,1")
    write(root / "fer2013new.csv", text)
    with pytest.raises(ValueError, match=r"line 9"):
        datasets.read_ferplus(root / "fer2013.csv", root / "fer2013new.csv", "train")
    with pytest.raises(FileNotFoundError, match="fer2013new.csv"):
        datasets.read_ferplus(root / "fer2013.csv", tmp_path / "fer2013new.csv", "train")


# ---------------------------------------------------------------------------------- class folders


def test_folder_with_splits(tmp_path):
    root = tmp_path / "f"
    train = {
        "Angry/a.png": ANG, "happiness/b.jpg": HAP, "3/c.png": HAP, "SURPRISED/d.jpeg": SUR, "0/e.png": SUR,
    }
    test = {
        "fearful/f.png": FEA, "Disgusted/g.png": DIS, "sad/h.bmp": SAD, "Neutral/i.png": NEU, "6/j.png": NEU,
    }
    for rel in train:
        img(root / "train" / rel)
    for rel in test:
        img(root / "Test" / rel)
    write(root / "train" / "Angry" / "readme.txt", "x")
    got = datasets.read_folder(root, "train")
    assert {s.path.name: s.label for s in got} == {k.split("/")[1]: v for k, v in train.items()}
    assert {s.split for s in got} == {"train"}
    got = datasets.read_folder(root, "test")
    assert {s.path.name: s.label for s in got} == {k.split("/")[1]: v for k, v in test.items()}
    assert len(datasets.read_folder(root, "all")) == 10
    with pytest.raises(FileNotFoundError, match="val"):
        datasets.read_folder(root, "val")


def test_folder_flat_and_errors(tmp_path):
    root = tmp_path / "flat"
    img(root / "anger" / "a.png")
    img(root / "Sadness" / "b.png")
    img(root / "4" / "c.png")
    got = datasets.read_folder(root, "all")
    assert {s.path.name: s.label for s in got} == {"a.png": ANG, "b.png": SAD, "c.png": SAD}
    assert {s.split for s in got} == {None}
    img(root / "contempt" / "d.png")
    with pytest.raises(ValueError, match="contempt"):
        datasets.read_folder(root, "all")
    (root / "contempt" / "d.png").unlink()
    (root / "contempt").rmdir()
    img(root / "train" / "happy" / "e.png")
    with pytest.raises(ValueError, match="mixes"):
        datasets.read_folder(root, "all")


# ---------------------------------------------------------------------------------- manifest


def test_manifest(tmp_path):
    root = tmp_path / "mmi"
    for n in "abcde":
        img(root / "img" / f"{n}.png")
    outside = img(tmp_path / "elsewhere" / "f.png")
    write(root / "manifest.csv", "\n".join([
        "path,label,subject,split",
        "img/a.png,3,s1,train",
        "img/b.png,angry,s1,train",
        "img/c.png,Surprise,s2,test",
        "img/d.png,fearful,s2,TEST",
        "img/e.png,6,,train",
        f"{outside},disgusted,s3,val",
    ]) + "\n")
    train = datasets.read_manifest(root / "manifest.csv", "train")
    assert [(s.path, s.label, s.subject, s.split) for s in train] == [
        (root / "img" / "a.png", HAP, "s1", "train"),
        (root / "img" / "b.png", ANG, "s1", "train"),
        (root / "img" / "e.png", NEU, None, "train"),
    ]
    test = datasets.read_manifest(root, "test")  # directory holding manifest.csv
    assert [(s.path.name, s.label, s.subject) for s in test] == [("c.png", SUR, "s2"), ("d.png", FEA, "s2")]
    val = datasets.read_dataset("manifest", root, "val")
    assert [(s.path, s.label) for s in val] == [(outside, DIS)]
    assert len(datasets.read_manifest(root, "all")) == 6


def test_manifest_errors(tmp_path):
    root = tmp_path / "m"
    img(root / "a.png")
    write(root / "nosplit.csv", "path,label\na.png,happy\n")
    assert [s.label for s in datasets.read_manifest(root / "nosplit.csv", "all")] == [HAP]
    with pytest.raises(ValueError, match="split column"):
        datasets.read_manifest(root / "nosplit.csv", "train")
    write(root / "badlabel.csv", "path,label\na.png,happy\na.png,contempt\n")
    with pytest.raises(ValueError, match=r"line 3.*contempt"):
        datasets.read_manifest(root / "badlabel.csv", "all")
    write(root / "missing.csv", "path,label\na.png,1\nnope/b.png,1\n")
    with pytest.raises(FileNotFoundError, match="b.png"):
        datasets.read_manifest(root / "missing.csv", "all")
    write(root / "header.csv", "file,emotion\na.png,1\n")
    with pytest.raises(ValueError, match="path"):
        datasets.read_manifest(root / "header.csv", "all")
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        datasets.read_manifest(root, "all")


# ---------------------------------------------------------------------------------- subject folds


def subject_samples(sizes):
    p = Path("x.png")
    return [Sample(i % 7, path=p, subject=f"s{j}") for j, n in enumerate(sizes) for i in range(n)]


def check_folds(samples, folds, k):
    n = len(samples)
    assert len(folds) == k
    seen = []
    for train, test in folds:
        assert sorted(train + test) == list(range(n))
        assert not set(train) & set(test)
        assert {samples[i].subject for i in train}.isdisjoint({samples[i].subject for i in test})
        seen += test
    assert sorted(seen) == list(range(n))  # test folds partition everything


def test_kfold_balanced_by_hand():
    samples = subject_samples([4, 3, 2, 1, 1, 1])  # greedy largest first → 4 | 3+1 | 2+1+1
    folds = splits.kfold_by_subject(samples, k=3)
    check_folds(samples, folds, 3)
    assert sorted(len(t) for _, t in folds) == [4, 4, 4]
    assert folds == splits.kfold_by_subject(samples, k=3)  # deterministic


@given(
    sizes=st.lists(st.integers(1, 12), min_size=5, max_size=30),
    k=st.integers(2, 5),
    seed=st.integers(0, 3),
)
def test_kfold_properties(sizes, k, seed):
    samples = subject_samples(sizes)
    folds = splits.kfold_by_subject(samples, k=k, seed=seed)
    check_folds(samples, folds, k)
    lens = [len(t) for _, t in folds]
    assert max(lens) - min(lens) <= max(sizes)
    assert folds == splits.kfold_by_subject(samples, k=k, seed=seed)


def test_kfold_errors(tmp_path):
    with pytest.raises(ValueError, match="subject"):
        splits.kfold_by_subject(subject_samples([1, 1, 1]), k=5)
    with pytest.raises(ValueError, match="no subject"):
        splits.kfold_by_subject(subject_samples([2] * 6) + [Sample(0, path=tmp_path)], k=5)


def test_kfold_on_ckplus(tmp_path):
    samples = datasets.read_ckplus(make_ckplus(tmp_path / "ck"))
    check_folds(samples, splits.kfold_by_subject(samples, k=3), 3)


# ---------------------------------------------------------------------------------- registry


def test_registry(tmp_path):
    names = {"rafdb", "affectnet", "sfew", "ckplus", "fer2013", "ferplus", "folder", "manifest"}
    assert set(datasets.DATASET_READERS) == names
    raf = make_rafdb(tmp_path / "raf")
    assert len(datasets.read_dataset("RAF-DB", raf, "train")) == 5
    assert len(datasets.read_dataset("ck+", make_ckplus(tmp_path / "ck"), "all")) == 6
    aff = make_affectnet(tmp_path / "aff")
    assert len(datasets.read_dataset("affectnet", aff, "test", num_classes=8)) == 3
    fer = fer_csv(tmp_path / "fer" / "fer2013.csv")
    assert len(datasets.read_dataset("fer2013", fer.parent, "val")) == 2
    assert len(datasets.read_dataset("fer2013", fer, "test")) == 3
    with pytest.raises(ValueError, match="rafdb.*manifest"):
        datasets.read_dataset("jaffe", tmp_path, "train")
