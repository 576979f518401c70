"""The figures tell one story: one colour map and one scale rule per quantity wherever it is drawn
(predict's heat map, analyze's figures), no weight drawn above its scale, figs. 11-12 laid out
to be read, one confusion-matrix file per run, and fig. 14 only from runs that differ in α."""

import json

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from helpers import small_settings

import lnlatten_fast as lf
from lnlatten_fast import analyze as analyze_cli
from lnlatten_fast import figures, viz
from lnlatten_fast.errors import ParameterError
from lnlatten_fast.training import analysis
from lnlatten_fast.training.settings import TrainSettings

matplotlib.use("Agg")

GEOM = lf.PatchGeometry(32, 4, 11, 7)  # M = 16: uniform 0.0625, the old fixed scale's top 2/M = 0.125
# The two weights: above the old 0.125 top, both drew as its top colour.
HIGH, MIDDLE = 0.308, 0.143


def peaked_weights(count: int) -> np.ndarray:
    """(count, 16) w_g summing to 1: regions 0 and 1 hold HIGH and MIDDLE."""
    rest = (1.0 - HIGH - MIDDLE) / 14
    return np.tile(np.array([HIGH, MIDDLE] + [rest] * 14), (count, 1))


def faces(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """The figures that figure functions save, kept (and an empty file written in their place).
    Tests draw to OUT."""
    kept = []

    def keep(fig, path, *args, **kwargs):
        kept.append(fig)
        open(path, "wb").close()

    monkeypatch.setattr(Figure, "savefig", keep)
    monkeypatch.chdir(tmp_path)
    return kept


OUT = "figure.png"


def weight_images(fig) -> list[AxesImage]:
    """The colour-mapped (2-D) images of a figure: weight grids and overlays, not the faces."""
    return [image for ax in fig.axes for image in ax.get_images() if image.get_array().ndim == 2]


# ---- the scale rule, on hand-picked values --------------------------------------------------
def test_the_nonlocal_scale_covers_every_weight_and_marks_uniform():
    scale = viz.nonlocal_weight_scale(16, [HIGH, MIDDLE, 0.01])
    assert (scale.cmap, scale.vmin, scale.vmax) == ("viridis", 0.0, HIGH)
    assert scale.marks == ((0.0625, "uniform 1/16"),)
    # Weights within 2/M keep the scale at 0 to 2/M: uniform stays mid-scale, not stretched.
    assert viz.nonlocal_weight_scale(16, [0.07, 0.05]).vmax == 0.125
    assert viz.nonlocal_weight_scale(9, []).vmax == pytest.approx(2 / 9)


def test_the_heat_map_draws_weights_above_2_over_m_in_their_own_colours(drawn):
    """The issue: 0.308 and 0.143 drew in one colour, with no sign of clipping."""
    viz.save_region_heatmap(faces(1)[0], peaked_weights(1)[0], GEOM, OUT)
    grid = weight_images(drawn[0])[-1]  # the n x n grid, beside the overlay
    assert grid.norm.vmax >= np.float32(HIGH)  # predict's weights are float32
    assert not np.allclose(grid.to_rgba(HIGH), grid.to_rgba(MIDDLE))


def test_every_weight_picture_uses_its_quantitys_map_and_scale(drawn):
    """predict's heat map, figs. 10 and 11 (w_g) and fig. 13 (w_l): one map, one rule."""
    w_g = peaked_weights(3)
    viz.save_region_heatmap(faces(1)[0], w_g[0], GEOM, OUT)
    figures.nonlocal_weight_grid(faces(3), w_g, ["a", "b", "c"], GEOM, OUT)
    figures.nonlocal_weight_snapshots(faces(3), np.arange(1, 5), np.stack([w_g] * 4), GEOM, OUT)
    w_l = np.linspace(0.2, 0.7, 16)
    figures.local_weight_occlusion(faces(1)[0], faces(16), w_l, np.tile(w_l, (16, 1)), GEOM, OUT)
    figures.confusion_matrix([[3, 1], [0, 4]], ["a", "b"], OUT, "t")
    *nonlocal_figures, local_figure, confusion_figure = drawn
    for fig in nonlocal_figures:
        images = weight_images(fig)
        assert images and {(i.get_cmap().name, i.norm.vmin) for i in images} == {("viridis", 0.0)}
        assert all(i.norm.vmax == pytest.approx(HIGH) for i in images)
        bar_labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
        assert "uniform 1/16" in bar_labels  # the uniform weight is marked on the colour bar
    assert {(i.get_cmap().name, i.norm.vmin, i.norm.vmax) for i in weight_images(local_figure)} == {("viridis", 0, 1)}
    assert {(i.get_cmap().name, i.norm.vmin, i.norm.vmax) for i in weight_images(confusion_figure)} == {("Blues", 0, 1)}


# ---- figs. 11 and 12: layout ----------------------------------------------------------------
def blank_fraction(png) -> float:
    """The share of the picture's rows and columns that are background only."""
    pixels = matplotlib.image.imread(png)[..., :3]
    blank = np.all(pixels > 0.99, axis=2)
    return (blank.all(axis=1).sum() + blank.all(axis=0).sum()) / (blank.shape[0] + blank.shape[1])


def test_fig_11_labels_its_rows_and_steps(drawn):
    probes = 8
    labels = [f"Class{p}\n#{10 + p}" for p in range(probes)]
    w_g = np.random.default_rng(1).dirichlet(np.ones(16), (40, probes))
    figures.nonlocal_weight_snapshots(faces(probes), np.arange(50, 2050, 50), w_g, GEOM, OUT,
                                      row_labels=labels)
    fig = drawn[0]
    row_heads = [ax for ax in fig.axes if ax.get_images() and ax.get_images()[0].get_array().ndim == 3]
    assert [ax.get_ylabel() for ax in row_heads] == labels
    step_titles = [ax.title for ax in fig.axes if ax.get_title().startswith(("step", "final"))]
    assert len(step_titles) == 7 and min(t.get_fontsize() for t in step_titles) >= 8


def test_fig_11_file_has_no_blank_band(tmp_path):
    w_g = np.random.default_rng(1).dirichlet(np.ones(16), (40, 8))
    path = figures.nonlocal_weight_snapshots(faces(8), np.arange(50, 2050, 50), w_g, GEOM, tmp_path / "f11.png",
                                             row_labels=[f"c{p}\n#{p}" for p in range(8)])
    assert blank_fraction(path) < 0.12


def test_fig_12_has_one_panel_per_face_one_legend_and_distinct_regions(drawn):
    probes = 6  # not a multiple of the 4 columns: no empty panels either
    w_g = np.random.default_rng(2).dirichlet(np.ones(16), (30, probes))
    figures.nonlocal_weight_curves(np.arange(30), w_g, [f"face {p}" for p in range(probes)], GEOM, OUT)
    fig = drawn[0]
    assert len(fig.axes) == probes and all(ax.get_title() == f"face {p}" for p, ax in enumerate(fig.axes))
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends[0].get_texts()) == 16
    for ax in fig.axes:
        regions = [line for line in ax.get_lines() if len(line.get_xdata()) == 30]
        looks = {(matplotlib.colors.to_hex(line.get_color()), str(line.get_linestyle())) for line in regions}
        assert len(regions) == 16 and len(looks) == 16


# ---- one confusion-matrix file per run ---------------------------------------------------------
@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    from lnlatten_fast.training.trainer import train

    out = tmp_path_factory.mktemp("figures") / "run"
    train(small_settings(out, epochs=1, trace_every=1, synthetic_train=28, synthetic_test=14, progress="none"))
    return out


def test_analyze_draws_the_confusion_matrix_once_at_the_runs_own_path(micro_run, capsys):
    """A run without the trainer's file (a K-fold fold, a stopped run) gets it from analyze, in
    the place train writes it: never a second copy under figures/."""
    (micro_run / "confusion_matrix.png").unlink()
    assert analyze_cli.main([str(micro_run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert str(micro_run / "confusion_matrix.png") in printed
    confusion_files = [p.relative_to(micro_run) for p in micro_run.rglob("*confusion*.png")]
    assert [str(p) for p in confusion_files] == ["confusion_matrix.png"]


# ---- fig. 14: runs that differ only in α ----------------------------------------------------
def fake_run(path, **changes):
    """A run directory as check_alpha_runs sees it: config.json and an attention trace."""
    model = {k: changes.pop(k) for k in ("alpha", "num_patches") if k in changes}
    settings = TrainSettings(model=lf.LNLConfig.tiny(**model), out=str(path), **changes)
    settings.validate()
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"settings": settings.to_dict(), "model": settings.model.to_dict()}))
    np.savez(path / "attention_trace.npz", w_g=np.zeros((1, 1, 16)))
    return path


def test_alpha_runs_of_another_patch_count_are_refused_naming_the_field(tmp_path, capsys):
    main = fake_run(tmp_path / "main", alpha=0.7)
    other = fake_run(tmp_path / "other", alpha=0.2, num_patches=9)
    assert analyze_cli.main([str(main), "--alpha-runs", str(other)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: --alpha-runs ")
    assert "num_patches 9 there, 16 in the main run" in error
    with pytest.raises(ParameterError) as refused:
        analysis.check_alpha_runs(main, [fake_run(tmp_path / "longer", alpha=0.2, epochs=30)])
    assert refused.value.parameter == "alpha_runs" and "epochs 30 there, 24 in the main run" in str(refused.value)


def test_alpha_runs_may_differ_in_seed_and_place(tmp_path):
    main = fake_run(tmp_path / "main", alpha=0.7)
    other = fake_run(tmp_path / "sweep" / "alpha-0.2" / "seed1", alpha=0.2, seed=1, device="cpu", trace_every=10,
                     tensorboard=True)
    assert analysis.check_alpha_runs(main, [str(other)]) == [other]


def test_a_field_a_runs_config_predates_counts_as_its_default(tmp_path):
    """A resumed run's config.json is rewritten by newer code, with fields an older run's file
    lacks: those hold their defaults in both runs, so they do not differ."""
    older = fake_run(tmp_path / "older", alpha=0.7)
    config = json.loads((older / "config.json").read_text())
    del config["settings"]["lr_decay"], config["settings"]["model"]["l2_lambda"]
    (older / "config.json").write_text(json.dumps(config))
    resumed = fake_run(tmp_path / "resumed", alpha=0.2, resume=True)
    assert analysis.check_alpha_runs(resumed, [older]) == [older]
    assert analysis.check_alpha_runs(older, [resumed]) == [resumed]
