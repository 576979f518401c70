"""`analyze` on a run whose LNL head sits on another backbone (the ResNet-18 stand-in of
tests/backbone_standins.py): the same figures as for a U-Net run, drawn from the head's w_g and
w_l, and fig. 13 greys the head's windows where they lie on the image."""

import contextlib
import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from lnlatten_fast import analyze as analyze_cli
from lnlatten_fast import figures
from lnlatten_fast import train as train_cli
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.data.pipeline import to_model_input
from lnlatten_fast.geometry import PatchGeometry
from lnlatten_fast.model import LNLAttenNet
from lnlatten_fast.training import checkpoint, trainer
from lnlatten_fast.training.localization import OCCLUSION_FILL

IMAGE = 80
# The head's windows on this backbone, by hand. The stand-in's layer1 (the high level) is 1/4 of
# the input (conv1 and maxpool, stride 2 each): 20 px, which is also the smallest map whose 4 x 4
# windows are SimpleNet's 8 px, so the adapter keeps it. The head tiles it with 8 px windows every
# 4 px (3 x 4 + 8 = 20, an overlap of about a third, as eq. 5 asks). Scaled back to the 80 px
# image (x 4): 32 px windows every 16 px. The config's own image geometry at 80 px is another
# lattice (26 px every 18).
HEAD_WINDOWS_ON_IMAGE = [(16 * r, 16 * c, 32) for r in range(4) for c in range(4)]


def run_flags(tmp_path, out, *flags):
    return ["--synthetic-train", "12", "--synthetic-test", "7", "--batch-size", "12",
            "--cache-dir", str(tmp_path / "cache"), "--trace-every", "1", "--trace-images", "3", "--progress", "none",
            "--epochs", "1", "--device", "cpu", "--out", str(out), *flags]


def analyzed(run) -> tuple[list[str], dict]:
    """analyze on `run`: the files it lists (relative to the run) and the arguments the figures of
    w_g (fig. 10) and of w_l under occlusion (fig. 13) were given."""
    seen = {}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        for name in ("nonlocal_weight_grid", "local_weight_occlusion"):
            def record(*args, _draw=getattr(figures, name), _name=name):
                seen.setdefault(_name, []).append(args)
                return _draw(*args)
            patch.setattr(figures, name, record)
        assert analyze_cli.main([str(run), "--device", "cpu"]) == 0
    return [str(Path(p).relative_to(run)) for p in printed.getvalue().split()], seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"unet": (run, analyzed(run)), "backbone": ...}: a U-Net run at 32 px and a ResNet-18
    stand-in run at IMAGE px, one short epoch each, traced every step, then analyzed."""
    tmp = tmp_path_factory.mktemp("analyze_backbone")
    unet, backbone = tmp / "unet", tmp / "resnet"
    with pytest.MonkeyPatch.context() as patch:
        # The end-of-run localisation summary (every test face with each window occluded) is
        # most of a tiny run's time and none of what analyze reads.
        patch.setattr(trainer, "load_test_regions", lambda *args: None)
        assert train_cli.main(run_flags(tmp, unet, "--image-size", "32")) == 0
        assert train_cli.main(run_flags(tmp, backbone, "--image-size", str(IMAGE),
                                        "--backbone", "module:backbone_standins:resnet18_standin")) == 0
    return {"unet": (unet, analyzed(unet)), "backbone": (backbone, analyzed(backbone))}


def test_analyze_draws_the_same_figures_for_a_backbone_run(runs):
    _, (names, _) = runs["unet"]
    assert "figures/local_weights_occlusion_0.png" in names and "figures/nonlocal_weights_curves.png" in names
    backbone, (backbone_names, _) = runs["backbone"]
    assert backbone_names == names
    assert all((backbone / name).stat().st_size > 0 for name in names)


def test_backbone_figures_use_the_heads_weights_and_windows(runs):
    """Before: fig. 13 greyed the config's 26 px windows every 18 px, not the head's."""
    run, (_, seen) = runs["backbone"]
    # w_g and w_l are the head's outputs for the probe faces: the network rebuilt here from last.pt.
    payload = checkpoint.load(run / "last.pt")
    model = LNLAttenNet(LNLConfig.from_dict(payload["config"]), load_backbone_weights=False).eval()
    model.load_state_dict(payload["model"])
    [(images, w_g, _, geom, _)] = seen["nonlocal_weight_grid"]
    with torch.no_grad():
        out = model(to_model_input(torch.from_numpy(np.array(images))))
    assert w_g.shape == (3, 4 * 4)
    np.testing.assert_allclose(w_g, out.nonlocal_weights.numpy(), rtol=1e-5, atol=1e-7)

    assert geom == PatchGeometry(IMAGE, 4, 32, 16)
    assert len(seen["local_weight_occlusion"]) == 2
    for k, (image, occluded, w_l, _, occlusion_geom, _, _) in enumerate(seen["local_weight_occlusion"]):
        np.testing.assert_allclose(w_l, out.local_weights[k].numpy(), rtol=1e-5, atol=1e-7)
        assert occlusion_geom == geom and len(occluded) == 16
        for copy, (row, col, side) in zip(occluded, HEAD_WINDOWS_ON_IMAGE):
            window = np.zeros(image.shape[:2], dtype=bool)
            window[row:row + side, col:col + side] = True
            assert (copy[window] == OCCLUSION_FILL).all()
            assert np.array_equal(copy[~window], image[~window])


@pytest.mark.parametrize("map_size, image_size, num_patches, overlap", [
    (20, 32, 16, 4), (20, 48, 16, 4), (20, 64, 16, 4), (36, 144, 16, 16), (14, 224, 4, 0), (56, 224, 36, None),
    (27, 32, 9, 0),  # abutting windows, 32 / 3 px apart: whole pixels need an overlap somewhere
])
def test_scaled_to_tile_it_near_the_scaled_head_windows(map_size, image_size, num_patches, overlap):
    """Each window's edges within a pixel per window step of the head's window scaled by
    image / map (exact fractions here), and the lattice tiles the image (PatchGeometry checks)."""
    head = PatchGeometry.for_image(map_size, num_patches, overlap)
    on_image = head.scaled_to(image_size)
    assert on_image.grid == head.grid and on_image.image_size == image_size
    scale = Fraction(image_size, map_size)
    for (row, col), (head_row, head_col) in zip(on_image.origins(), head.origins()):
        for start, head_start in ((row, head_row), (col, head_col)):
            allowed = head.grid - 1
            assert abs(start - head_start * scale) <= allowed
            assert abs(start + on_image.patch - (head_start + head.patch) * scale) <= allowed


def test_scaled_to_of_the_unet_are_its_own():
    """The U-Net's map is the image: its figures keep the head's lattice as it is."""
    head = PatchGeometry.for_image(144, 16)
    assert head.scaled_to(144) is head
