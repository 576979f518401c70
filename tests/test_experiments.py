"""The paper's experiments: localisation measured on the synthetic faces, the analysis figures
(`analyze`), and the ablation sweeps (`sweep`)."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import small_settings

import lnlatten_fast as lf
from lnlatten_fast import analyze as analyze_cli
from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast.model import LNLOutput
from lnlatten_fast.training import localization, sweeps
from lnlatten_fast.training.trainer import train

FIGURES = {
    "nonlocal_weights.png", "nonlocal_weights_curves.png", "nonlocal_weights_snapshots.png",
    "local_weights_occlusion_0.png", "local_weights_occlusion_1.png",
}


# ---- localisation metrics on hand-made cases -------------------------------------------------
def test_patch_areas_count_mask_pixels_per_window():
    geom = lf.PatchGeometry(8, 2, 5, 3)  # windows at 0 and 3: columns/rows 0-4 and 3-7
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 0, 0] = True  # window 0 only
    mask[0, 4, 4] = True  # all four windows
    mask[0, 7, 7] = True  # window 3 only
    assert localization.patch_areas(mask, geom).tolist() == [[2, 1, 1, 2]]


def test_spearman_with_ties_against_hand_computed_values():
    # x ranks 0,1,2,3; y = (1, 1, 2, 0) ranks (1.5, 1.5, 3, 0): rho = cov / (sd * sd) by hand
    rho = localization.spearman(np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 1, 2, 0]]))
    rx, ry = np.array([0, 1, 2, 3]) - 1.5, np.array([1.5, 1.5, 3, 0]) - 1.5
    assert rho[0] == pytest.approx((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))
    assert localization.spearman(np.array([[1.0, 2, 3]]), np.array([[3.0, 2, 1]]))[0] == pytest.approx(-1)
    assert np.isnan(localization.spearman(np.array([[1.0, 1, 1]]), np.array([[1.0, 2, 3]]))[0])


def test_crucial_mass_ratio_and_its_ceiling():
    areas = np.array([[5, 0, 0, 3], [1, 1, 1, 1]])  # the second image: every patch crucial, left out
    w_g = np.array([[0.5, 0.0, 0.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ratio, ceiling = localization.crucial_mass_ratio(w_g, areas)
    assert (ratio, ceiling) == (pytest.approx(2.0), pytest.approx(2.0))  # all mass on 2 of 4 patches
    ratio, _ = localization.crucial_mass_ratio(np.full((1, 4), 0.25), areas[:1])
    assert ratio == pytest.approx(1.0)  # uniform weights: no preference


class BrightnessModel(torch.nn.Module):
    """w_l[m] = mean of window m of the (normalised) input, w_g uniform: an occluded window's w_l
    falls by exactly how much of it turned grey."""

    def __init__(self, geom):
        super().__init__()
        self.geometry = geom
        self.local_attention = torch.nn.Identity()  # present: the occlusion test runs

    def forward(self, x):
        windows = [x[:, :, r:r + self.geometry.patch, c:c + self.geometry.patch].mean(dim=(1, 2, 3))
                   for r, c in self.geometry.origins()]
        w_l = torch.stack(windows, dim=1)
        m = self.geometry.num_patches
        return LNLOutput(torch.zeros(len(x), 7), torch.full((len(x), m), 1 / m), w_l)


def test_occlusion_selectivity_of_a_model_that_sees_brightness():
    geom = lf.PatchGeometry(32, 2, 20, 12)  # neighbours share 8 of 20 columns (or rows)
    model = BrightnessModel(geom)
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    regions = np.zeros((1, 32, 32), np.uint8)
    found = localization.measure(model, white, regions, torch.device("cpu"))
    step = float(lf.data.pipeline.to_model_input(torch.tensor([[[[255, 255, 255]]]], dtype=torch.uint8)).mean()
                 - lf.data.pipeline.to_model_input(torch.tensor([[[[128, 128, 128]]]], dtype=torch.uint8)).mean())
    # Own window: all 400 pixels grey. Side neighbours: 20 x 8 = 160 of 400; the diagonal: 8 x 8.
    own = step
    others = step * (160 + 160 + 64) / 400 / 3
    assert found["occlusion_own_drop"] == pytest.approx(own, rel=1e-5)
    assert found["occlusion_other_drop"] == pytest.approx(others, rel=1e-5)
    assert found["occlusion_selectivity"] == pytest.approx(own / others, rel=1e-5)


def test_selectivity_is_undefined_when_the_others_do_not_fall():
    """A w_l that rises when its patch is hidden must not read as selective: a ratio of two
    negative drops would be large and positive."""

    class Inverted(BrightnessModel):
        def forward(self, x):
            out = super().forward(x)
            return out._replace(local_weights=-out.local_weights)

    geom = lf.PatchGeometry(32, 2, 20, 12)
    found = localization.measure(Inverted(geom), np.full((1, 32, 32, 3), 255, np.uint8),
                                 np.zeros((1, 32, 32), np.uint8), torch.device("cpu"))
    assert found["occlusion_own_drop"] < 0 and found["occlusion_selectivity"] is None


# ---- a finished run: localisation in its summary, and every figure -----------------------------
@pytest.fixture(scope="module")
def traced_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    runs = {}
    for alpha in (0.7, 0.2):
        out = root / f"alpha{alpha}"
        train(small_settings(out, trace_every=2, model=lf.LNLConfig.tiny(image_size=32, alpha=alpha)))
        runs[alpha] = out
    return runs


def test_synthetic_run_measures_localization(traced_runs):
    summary = json.loads((traced_runs[0.7] / "summary.json").read_text())
    found = summary["localization"]
    for key in ("crucial_mass_ratio", "crucial_rank_corr", "crucial_mass_ratio_ceiling"):
        assert math.isfinite(found[key])
    assert 0 <= found["crucial_mass_ratio"] <= found["crucial_mass_ratio_ceiling"]
    assert "occlusion_selectivity" in found and "occlusion_own_drop" in found
    assert "localisation" in (traced_runs[0.7] / "summary.md").read_text()


def test_analyze_writes_every_figure(traced_runs, capsys):
    run = traced_runs[0.7]
    trainers_confusion = (run / "confusion_matrix.png").read_bytes()
    assert analyze_cli.main([str(run), "--alpha-runs", str(traced_runs[0.2])]) == 0
    written = {p.name for p in (run / "figures").iterdir()}
    assert FIGURES | {"nonlocal_weights_by_alpha.png"} <= written
    for name in written:
        assert (run / "figures" / name).stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
    printed = capsys.readouterr().out.split()
    assert str(run / "figures" / "nonlocal_weights.png") in printed
    # The confusion matrix is the run's one file, as train wrote it: listed, not copied or redrawn.
    assert str(run / "confusion_matrix.png") in printed and not any("confusion" in name for name in written)
    assert (run / "confusion_matrix.png").read_bytes() == trainers_confusion


def test_analyze_errors_name_the_argument(traced_runs, tmp_path, capsys):
    assert analyze_cli.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: RUN_DIR ")
    run = traced_runs[0.7]
    assert analyze_cli.main([str(run), "--alpha-runs", str(run)]) == 2
    assert "error: --alpha-runs the runs share one α" in capsys.readouterr().err


# ---- sweeps -----------------------------------------------------------------------------------
def test_sweep_settings_are_the_papers():
    assert [s.model["variant"] for s in sweeps.SWEEPS["variants"][1]] == ["simple", "local", "nonlocal", "full"]
    assert [s.model["alpha"] for s in sweeps.SWEEPS["alpha"][1]] == pytest.approx([i / 10 for i in range(11)])
    assert [s.model["num_patches"] for s in sweeps.SWEEPS["patches"][1]] == [4, 9, 16, 25, 36]
    assert [s.model["overlap"] for s in sweeps.SWEEPS["overlap"][1]] == [4, 8, 12, 16, 20, 24]
    for name in ("patches", "overlap"):  # the faithful sizing: parameters follow the patch
        assert all(s.model["local_feature_size"] is None for s in sweeps.SWEEPS[name][1])
    counts = [sweeps.parameter_count(lf.LNLConfig(**s.model)) for s in sweeps.SWEEPS["overlap"][1]]
    assert counts[0] != counts[-1]
    assert counts[3] == 89_654_167  # N = 16 is the paper's network, pooled or not


def test_table_v_layout_with_the_papers_numbers(tmp_path):
    settings = sweeps.SWEEPS["alpha"][1]
    for setting, accuracies in ((settings[0], (0.80, 0.90)), (settings[3], (0.5,))):
        for seed, accuracy in enumerate(accuracies):
            directory = sweeps.run_dir(tmp_path, setting, seed)
            directory.mkdir(parents=True)
            (directory / "summary.json").write_text(json.dumps({"test_accuracy_last10_mean": accuracy}))
    parameters = {s.slug: sweeps.parameter_count(lf.LNLConfig.tiny(**s.model)) for s in settings}
    rows = sweeps.collect(tmp_path, "alpha", [0, 1], parameters)
    markdown, table = sweeps.write_tables(tmp_path, "alpha", rows, "rafdb", "two seeds")
    text = markdown.read_text()
    header, _, ours, paper, parameters = [line for line in text.splitlines() if line.startswith("|")]
    assert header.split("|")[1:4] == [" α ", " 0 ", " 0.1 "]
    cells = [c.strip() for c in ours.split("|")[1:-1]]
    # seeds 0.80 and 0.90: mean 85.00, sample std 7.07; α = 0.3 has one seed; the rest none
    assert cells[:5] == ["ours (rafdb)", "85.00 ± 7.07", "—", "—", "50.00"]
    assert paper.split("|")[2].strip() == "84.09" and paper.split("|")[-2].strip() == "83.02"
    assert "Table V on rafdb" in text
    csv_rows = table.read_text().splitlines()
    assert csv_rows[0].startswith("α,parameters,seeds,accuracy_mean,accuracy_std,paper,crucial_mass_ratio")
    assert csv_rows[1].split(",")[2:6] == ["2", "85.0000", "7.0711", "84.09"]


def test_cpu_table_iv_sweep_writes_the_table_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    flags = ["--epochs", "1", "--synthetic-train", "56", "--synthetic-test", "21", "--image-size", "32",
             "--batch-size", "16", "--cache-dir", str(tmp_path / "cache")]
    assert sweep_cli.main(["variants", "--out", str(out), "--jobs", "2", *flags]) == 0
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| Model") or
            line.startswith("| LNL")]
    assert [row.split("|")[1].strip() for row in rows] == ["Model-S", "Model-Local", "Model-NonLocal", "LNLAttenNet"]
    for row in rows:
        parameters, accuracy = row.split("|")[2].strip(), row.split("|")[3].strip()
        assert int(parameters.replace(",", "")) > 0 and 0 <= float(accuracy) <= 100
    for slug in ("simple", "local", "nonlocal", "full"):
        config = json.loads((out / slug / "seed0" / "config.json").read_text())
        assert config["model"]["variant"] == slug and config["settings"]["epochs"] == 1
    capsys.readouterr()
    assert sweep_cli.main(["variants", "--out", str(out), *flags]) == 0
    assert "0 run(s) to train, 4 finished before" in capsys.readouterr().out


def test_sweep_refuses_flags_it_sets(tmp_path, capsys):
    assert sweep_cli.main(["alpha", "--out", str(tmp_path), "--alpha", "0.3"]) == 2
    assert capsys.readouterr().err.strip() == "error: --alpha is set by the sweep alpha itself; leave it out"
    assert sweep_cli.main(["variants", "--out", str(tmp_path), "--seed", "4"]) == 2
    assert "error: --seed is set by the sweep" in capsys.readouterr().err
    assert sweep_cli.main(["patches", "--out", str(tmp_path), "--image-size", "32"]) == 2
    assert "error: --image-size 32 with 36 windows" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written
