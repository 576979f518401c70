"""The procedural facial-expression dataset: determinism, shapes, balance, the attribute table,
the ground-truth masks, argument checking, and that each cue lives in (and only in) its region."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lnlatten_fast.data import synthetic as syn
from lnlatten_fast.data.synthetic import (
    CLASS_ATTRIBUTES,
    CLASS_NAMES,
    REGION_CODES,
    SyntheticFace,
    generate,
    label_of,
    render_face,
)

REGIONS = ("brows", "eyes", "mouth")


def _grow(mask):
    """Dilate a boolean mask by one pixel (3x3)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _image_rng(seed, index):
    # The per-image generator the module documents: default_rng([seed, 1, index]).
    return np.random.default_rng([seed, 1, index])


# ----------------------------------------------------------------------------- the table


def test_class_names_are_the_canonical_order():
    assert CLASS_NAMES == ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    assert REGION_CODES == {"other": 0, "eyes": 1, "brows": 2, "mouth": 3}
    assert sorted(CLASS_ATTRIBUTES) == list(range(7))
    assert all(set(attrs) == set(REGIONS) for attrs in CLASS_ATTRIBUTES.values())


def test_no_region_decides_the_class():
    for region in REGIONS:
        counts = Counter(attrs[region] for attrs in CLASS_ATTRIBUTES.values())
        shared_by_one = [value for value, n in counts.items() if n < 2]
        assert not shared_by_one, f"{region} value(s) {shared_by_one} identify a class on their own"


def test_every_pair_differs_and_every_region_is_needed():
    combos = {label: tuple(attrs[r] for r in REGIONS) for label, attrs in CLASS_ATTRIBUTES.items()}
    assert len(set(combos.values())) == 7, "two classes have the same attributes"
    only_differs_in = Counter()
    for a, b in itertools.combinations(range(7), 2):
        differing = [r for r, va, vb in zip(REGIONS, combos[a], combos[b]) if va != vb]
        if len(differing) == 1:
            only_differs_in[differing[0]] += 1
    # For each region some pair of classes differs there only: no region can be ignored.
    assert set(only_differs_in) == set(REGIONS), only_differs_in


def test_table_is_in_the_module_docstring():
    for label, name in enumerate(CLASS_NAMES):
        attrs = CLASS_ATTRIBUTES[label]
        row = f"{label}      {name:<11} {attrs['brows']:<9} {attrs['eyes']:<9} {attrs['mouth']}"
        assert row in syn.__doc__, row


# ----------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_the_same_bytes_whatever_the_batching():
    full = generate(45, size=40, seed=3)  # 40 px: 20 images per render chunk, so 3 chunks
    for start, n in [(0, 1), (7, 5), (19, 3), (21, 24), (44, 1)]:
        part = generate(n, size=40, seed=3, start=start)
        for key in ("images", "labels", "regions", "occluders"):
            np.testing.assert_array_equal(part[key], full[key][start : start + n], err_msg=key)
    again = generate(45, size=40, seed=3)
    assert all(np.array_equal(again[k], full[k]) for k in full)


@given(seed=st.integers(0, 2**32), index=st.integers(0, 10**9), occ=st.sampled_from([0.0, 0.5, 1.0]))
def test_generate_matches_render_face_with_the_documented_generator(seed, index, occ):
    got = generate(1, size=33, seed=seed, start=index, occlusion_prob=occ)
    face = render_face(label_of(index, seed), 33, _image_rng(seed, index), occlusion_prob=occ)
    assert got["labels"][0] == face.label
    np.testing.assert_array_equal(got["images"][0], face.image)
    np.testing.assert_array_equal(got["regions"][0], face.regions)
    np.testing.assert_array_equal(got["occluders"][0], face.occluder)


def test_different_seeds_give_different_images():
    a, b = generate(14, 32, seed=0), generate(14, 32, seed=1)
    assert not np.array_equal(a["labels"], b["labels"])
    for i in range(14):
        assert not np.array_equal(a["images"][i], b["images"][i])
    # ... and neighbouring indices too
    assert all(not np.array_equal(a["images"][i], a["images"][i + 1]) for i in range(13))


# ----------------------------------------------------------------------------- shapes, balance


@pytest.mark.parametrize("size", [32, 47, 64, 256])
def test_shapes_and_dtypes(size):
    n = 3 if size < 256 else 1
    d = generate(n, size=size, seed=1)
    assert d["images"].shape == (n, size, size, 3) and d["images"].dtype == np.uint8
    assert d["labels"].shape == (n,) and d["labels"].dtype == np.int64
    assert d["regions"].shape == (n, size, size) and d["regions"].dtype == np.uint8
    assert d["occluders"].shape == (n, size, size) and d["occluders"].dtype == np.bool_
    assert set(np.unique(d["regions"])) <= {0, 1, 2, 3}
    assert d["images"].std() > 20, "images should not be flat"
    face = render_face(4, size, np.random.default_rng(0))
    assert isinstance(face, SyntheticFace) and face.label == 4 and type(face.label) is int
    assert face.image.shape == (size, size, 3) and face.image.dtype == np.uint8
    assert face.regions.shape == (size, size) and face.occluder.dtype == np.bool_


def test_empty_request():
    d = generate(0, size=32)
    assert d["images"].shape == (0, 32, 32, 3) and d["labels"].shape == (0,)


def test_labels_are_balanced_per_block_of_seven():
    labels = generate(70, 32, seed=5)["labels"]
    for block in labels.reshape(10, 7):
        assert sorted(block) == list(range(7))
    assert not all(np.array_equal(labels[:7], labels[7 * k : 7 * k + 7]) for k in range(1, 10)), "not periodic"


@given(seed=st.integers(0, 1000), start=st.integers(0, 10**6), n=st.integers(0, 60))
def test_label_counts_are_within_two_of_even(seed, start, n):
    counts = Counter(label_of(i, seed) for i in range(start, start + n))
    assert all(abs(counts[c] - n / 7) < 2 for c in range(7)), counts


# ----------------------------------------------------------------------------- masks


def _centroid_rows(regions, code):
    rows, _ = np.nonzero(regions == code)
    return rows.mean()


def test_region_masks_are_present_and_ordered_top_to_bottom():
    d = generate(70, size=64, seed=11)
    for i in range(70):
        reg = d["regions"][i]
        areas = {name: int((reg == REGION_CODES[name]).sum()) for name in REGIONS}
        assert min(areas.values()) >= 8, (i, areas)
        # Centroids sit near the face's midline, so a <= 12 degree tilt keeps their row order.
        brows, eyes, mouth = (_centroid_rows(reg, REGION_CODES[r]) for r in REGIONS)
        assert brows + 1 < eyes < mouth - 3, (i, brows, eyes, mouth)
        # Two brows and two eyes: each mask is roughly left/right symmetric around the mouth.
        cols = {r: np.nonzero(reg == REGION_CODES[r])[1] for r in REGIONS}
        for r in ("brows", "eyes"):
            assert cols[r].min() < cols["mouth"].mean() < cols[r].max()
        assert reg.mean() < 1.0, "crucial regions should be a minority of the image"


def test_occluder_mask_follows_occlusion_prob_and_leaves_regions_alone():
    clear = generate(21, size=48, seed=2, occlusion_prob=0.0)
    blocked = generate(21, size=48, seed=2, occlusion_prob=1.0)
    assert not clear["occluders"].any()
    assert all(blocked["occluders"][i].sum() >= 10 for i in range(21))
    # Masks are drawn before occlusion; the occluder changes pixels only where it is.
    np.testing.assert_array_equal(clear["regions"], blocked["regions"])
    for i in range(21):
        changed = (clear["images"][i] != blocked["images"][i]).any(-1)
        assert changed.any() and not (changed & ~_grow(blocked["occluders"][i])).any(), i
    partial = generate(280, size=32, seed=9, occlusion_prob=0.3)["occluders"].any(axis=(1, 2))
    assert 0.2 < partial.mean() < 0.4


# Where two grown cue shapes meet, the later one in this order owns the pixel (module docs).
PRIORITY = ("brows", "eyes", "mouth")


@pytest.mark.parametrize("region,a,b", [("mouth", 0, 1), ("eyes", 1, 4), ("brows", 5, 6)])
@pytest.mark.parametrize("size", [32, 64])
def test_each_cue_is_drawn_inside_its_region(region, a, b, size):
    """Two classes that differ in one region only, rendered from the same random state: their
    images differ, and only inside that region's masks (or masks of higher priority, which may
    own the pixels where a brow touches an eyelid). Catches cues drawn outside their mask, label
    information leaking anywhere else, and a mask that misses its cue."""
    assert [r for r in REGIONS if CLASS_ATTRIBUTES[a][r] != CLASS_ATTRIBUTES[b][r]] == [region]
    owners = [REGION_CODES[r] for r in PRIORITY[PRIORITY.index(region) :]]
    code = REGION_CODES[region]
    for seed in range(12):
        fa = render_face(a, size, np.random.default_rng(seed))
        fb = render_face(b, size, np.random.default_rng(seed))
        changed = (fa.image != fb.image).any(-1)
        inside = np.isin(fa.regions, owners) | np.isin(fb.regions, owners)
        assert changed.sum() >= 3, (seed, "the attribute did not change the picture")
        assert not (changed & ~inside).any(), (seed, np.argwhere(changed & ~inside)[:5])
        # Masks of higher priority do not depend on this attribute; lower ones only where
        # this region's mask takes pixels from them.
        for other in set(REGIONS) - {region}:
            oc = REGION_CODES[other]
            if PRIORITY.index(other) > PRIORITY.index(region):
                assert np.array_equal(fa.regions == oc, fb.regions == oc), (seed, other)
            else:
                here = (fa.regions == code) | (fb.regions == code)
                assert np.array_equal((fa.regions == oc) & ~here, (fb.regions == oc) & ~here), (seed, other)


@given(seed=st.integers(0, 2**32), pair=st.sampled_from([(0, 3), (1, 2), (1, 4), (2, 4), (5, 6)]))
def test_the_mouth_region_shows_nothing_but_the_mouth(seed, pair):
    """Classes with the same mouth, same random state: identical mouth mask and mouth pixels
    (so a model looking at the mouth alone cannot tell them apart -- by construction)."""
    a, b = pair
    assert CLASS_ATTRIBUTES[a]["mouth"] == CLASS_ATTRIBUTES[b]["mouth"]
    fa = render_face(a, 32, np.random.default_rng(seed))
    fb = render_face(b, 32, np.random.default_rng(seed))
    mouth = fa.regions == REGION_CODES["mouth"]
    np.testing.assert_array_equal(mouth, fb.regions == REGION_CODES["mouth"])
    np.testing.assert_array_equal(fa.image[mouth], fb.image[mouth])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "call,error,name",
    [
        (lambda: render_face(7, 64, np.random.default_rng()), ValueError, "label"),
        (lambda: render_face(-1, 64, np.random.default_rng()), ValueError, "label"),
        (lambda: render_face(1.0, 64, np.random.default_rng()), TypeError, "label"),
        (lambda: render_face(1, 31, np.random.default_rng()), ValueError, "size"),
        (lambda: render_face(1, 64, 0), TypeError, "rng"),
        (lambda: render_face(1, 64, np.random.default_rng(), occlusion_prob=1.5), ValueError, "occlusion_prob"),
        (lambda: generate(-1), ValueError, "num_images"),
        (lambda: generate(2.5), TypeError, "num_images"),
        (lambda: generate(1, size=16), ValueError, "size"),
        (lambda: generate(1, size=True), TypeError, "size"),
        (lambda: generate(1, occlusion_prob=-0.1), ValueError, "occlusion_prob"),
        (lambda: generate(1, occlusion_prob=float("nan")), ValueError, "occlusion_prob"),
        (lambda: generate(1, occlusion_prob="0.5"), TypeError, "occlusion_prob"),
        (lambda: generate(1, seed=-1), ValueError, "seed"),
        (lambda: generate(1, start=-3), ValueError, "start"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_numpy_integers_are_accepted():
    d = generate(np.int64(2), size=np.int32(32), seed=np.uint8(4), start=np.int64(3))
    assert d["images"].shape == (2, 32, 32, 3)


# ----------------------------------------------------------------------------- learnability


def _aligned_crops(data, keep_codes, size):
    """The grey image with everything but the regions in `keep_codes` blanked, cropped around
    the mouth's centroid (removing the pose shift a tiny model would otherwise have to learn;
    the mouth, because its mask, unlike the eyes', does not depend on the other attributes)."""
    out = []
    for img, reg in zip(data["images"], data["regions"]):
        rows, cols = np.nonzero(reg == REGION_CODES["mouth"])
        r0 = int(np.rint(rows.mean())) - (3 * size) // 4
        c0 = int(np.rint(cols.mean())) - size // 2
        keep = np.isin(reg, keep_codes)
        masked = np.where(keep, img.mean(-1), 0).astype(np.float32) / 255.0  # grey: 3x fewer inputs
        padded = np.pad(masked, size)
        out.append(padded[size + r0 : size + r0 + size, size + c0 : size + c0 + size])
    return torch.from_numpy(np.stack(out)).flatten(1)


def _fit_and_score(x_train, y_train, x_test, steps=150):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 7))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(x_test).argmax(1).numpy()


@pytest.fixture
def one_thread():
    # A model this small runs fastest on one thread, and far more predictably on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_mouth_alone_cannot_tell_the_classes_apart_but_all_regions_can(one_thread):
    """A small MLP that sees only the mouth region gets the mouth *value* right but not the
    class (classes share mouths: at most 3/7 is possible); the same model seeing the three
    regions does get the class."""
    size, crop = 32, 28
    train, test = generate(1400, size, seed=20), generate(700, size, seed=21)
    y_train = torch.from_numpy(train["labels"])
    y_test = test["labels"]
    mouth_value = np.array([CLASS_ATTRIBUTES[c]["mouth"] for c in range(7)])

    mouth = [REGION_CODES["mouth"]]
    pred = _fit_and_score(_aligned_crops(train, mouth, crop), y_train, _aligned_crops(test, mouth, crop))
    class_acc = (pred == y_test).mean()
    value_acc = (mouth_value[pred] == mouth_value[y_test]).mean()
    per_class = [(pred[y_test == c] == c).mean() for c in range(7)]
    assert value_acc > 0.9, f"the mouth should show its own attribute ({value_acc:.2f})"
    assert class_acc < 0.52, f"the mouth alone should not decide the class ({class_acc:.2f})"
    assert min(per_class) < 0.75, per_class

    codes = [REGION_CODES[r] for r in REGIONS]
    pred = _fit_and_score(_aligned_crops(train, codes, crop), y_train, _aligned_crops(test, codes, crop))
    all_acc = (pred == y_test).mean()
    assert all_acc > 0.8, f"brows + eyes + mouth should decide the class ({all_acc:.2f})"
