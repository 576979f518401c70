"""Decoded-image cache, batch loader and on-device augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lnlatten_fast.data.cache import build_image_cache
from lnlatten_fast.data.pipeline import BatchLoader, augment, to_model_input
from lnlatten_fast.data.datasets import Sample
from lnlatten_fast.data.sources import load_split
from lnlatten_fast.data.splits import stratified_holdout
from lnlatten_fast.errors import ParameterError, cli_message


def test_to_model_input_scales_and_keeps_channels_last():
    u8 = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat(2, 4, 4, 1)  # (2, 4, 4, 3)
    x = to_model_input(u8)
    assert x.shape == (2, 3, 4, 4) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[:, 0], torch.full((2, 4, 4), -1.0))
    assert torch.allclose(x[:, 1], torch.full((2, 4, 4), 1.0))
    assert torch.allclose(x[:, 2], torch.full((2, 4, 4), 51 / 127.5 - 1))


def test_augment_is_a_flip_and_a_shift_of_each_image():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 10, 10)
    pad = 2
    out = augment(x, torch.Generator().manual_seed(3), crop_padding=pad)
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    flips = 0
    for b in range(len(x)):
        candidates = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[b], (padded[b].flip(-1) if flip else padded[b])[:, dy : dy + 10, dx : dx + 10])
        ]
        assert candidates, f"image {b} is neither a crop nor a flipped crop of its input"
        flips += candidates[0][0]
    assert 0 < flips < len(x)  # both outcomes happen


def test_augment_is_reproducible_from_the_generator():
    x = torch.randn(8, 3, 12, 12)
    a = augment(x, torch.Generator().manual_seed(7), 2)
    b = augment(x, torch.Generator().manual_seed(7), 2)
    c = augment(x, torch.Generator().manual_seed(8), 2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_loader_covers_each_index_once(drop_last):
    images = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    labels = np.arange(10) % 7
    indices = np.array([9, 2, 5, 7, 0, 1, 3])
    loader = BatchLoader(images, labels, indices, 3, "cpu", shuffle=True, epoch_seed=1, drop_last=drop_last)
    seen = []
    for x, y in loader:
        ids = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()  # pixel value = index
        assert torch.equal(y, torch.from_numpy(labels[ids.numpy()]))
        seen += ids.tolist()
    assert len(seen) == (6 if drop_last else 7) == len(loader) * 3 - (0 if drop_last else 2)
    assert len(set(seen)) == len(seen) and set(seen) <= set(indices.tolist())
    again = [y for _, y in BatchLoader(images, labels, indices, 3, "cpu", shuffle=True, epoch_seed=1)]
    other = [y for _, y in BatchLoader(images, labels, indices, 3, "cpu", shuffle=True, epoch_seed=2)]
    first = [y for _, y in BatchLoader(images, labels, indices, 3, "cpu", shuffle=True, epoch_seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(again, first))
    assert not all(torch.equal(a, b) for a, b in zip(other, first))


def _write_faces(folder, colours):
    paths = []
    for i, colour in enumerate(colours):
        path = folder / f"img{i}.png"
        Image.new("RGB", (20 + i, 30), colour).save(path)
        paths.append(path)
    return paths


def test_image_cache_decodes_once_and_rebuilds_when_a_source_changes(tmp_path):
    paths = _write_faces(tmp_path, [(255, 0, 0), (0, 128, 255)])
    samples = [Sample(3, path=paths[0]), Sample(5, path=paths[1])]
    cache = tmp_path / "cache"
    first = build_image_cache(samples, 16, "faces", cache)
    assert first.images.shape == (2, 16, 16, 3) and first.images.dtype == np.uint8
    assert (first.images[0] == [255, 0, 0]).all() and (first.images[1] == [0, 128, 255]).all()
    assert first.labels.tolist() == [3, 5]
    entries = sorted(p.name for p in cache.glob("*.npy"))
    assert len(entries) == 2

    stamp = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    build_image_cache(samples, 16, "faces", cache)  # served from the cache, nothing rewritten
    assert stamp == {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}

    Image.new("RGB", (20, 30), (0, 255, 0)).save(paths[0])
    rebuilt = build_image_cache(samples, 16, "faces", cache)
    assert (rebuilt.images[0] == [0, 255, 0]).all()
    assert sorted(p.name for p in cache.glob("*.npy")) != entries and len(list(cache.glob("*.npy"))) == 2


def test_image_cache_names_an_undecodable_file(tmp_path):
    """Strict: the build fails naming the file. By default the image is left out and listed."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        build_image_cache([Sample(0, path=bad)], 16, "bad", tmp_path / "cache", strict=True)
    images = build_image_cache([Sample(0, path=bad)], 16, "bad", tmp_path / "cache")
    assert len(images) == 0 and [item["path"] for item in images.skipped] == [str(bad)]


def test_synthetic_splits_are_disjoint_and_cached(tmp_path):
    train = load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=21)
    test = load_split("synthetic", "test", 32, cache_dir=tmp_path, synthetic_size=14)
    assert train.images.shape == (21, 32, 32, 3) and test.images.shape == (14, 32, 32, 3)
    assert sorted(np.bincount(train.labels).tolist()) == [3] * 7
    flat_train = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in flat_train for img in test.images)
    again = load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=21)
    assert np.array_equal(again.images, train.images)


def test_load_split_errors_name_the_parameter_and_the_cli_names_the_flag(tmp_path):
    """A library caller is told the parameter (data_root); the command lines show the flag."""
    with pytest.raises(ParameterError, match="^dataset must be one of") as error:
        load_split("imagenet", "train", 32, cache_dir=tmp_path)
    assert cli_message(error.value).startswith("error: --dataset must be one of")
    with pytest.raises(ValueError, match="^data_root is required") as error:
        load_split("rafdb", "train", 32, cache_dir=tmp_path)
    assert error.value.parameter == "data_root" and "--" not in str(error.value)
    assert cli_message(error.value).startswith("error: --data-root is required")
    with pytest.raises(FileNotFoundError, match="^data_root .*nowhere") as error:
        load_split("rafdb", "train", 32, data_root=tmp_path / "nowhere", cache_dir=tmp_path)
    assert "--data-root" in cli_message(error.value) and "nowhere" in cli_message(error.value)


def test_stratified_holdout_keeps_class_proportions():
    labels = np.repeat(np.arange(7), 20)
    keep, held = stratified_holdout(labels, 0.25, seed=0)
    assert len(set(keep) & set(held)) == 0 and len(keep) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [5] * 7
    with pytest.raises(ParameterError, match="fraction must lie in"):
        stratified_holdout(labels, 1.5, 0)
