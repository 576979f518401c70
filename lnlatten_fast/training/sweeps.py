"""The paper's ablations (tables IV-VII) as sweeps of training runs, and their tables; and the
`backbones` table: the paper's U-Net next to other backbones under the same LNL head.

A sweep is a list of settings, each a few LNLConfig fields on top of whatever else the run is
given; every (setting, seed) trains in its own run directory, OUT/<setting>/seed<k>, so a
finished one is found again (its summary.json) and skipped. Tables VI and VII keep SimpleNet's
natural P // 8 output (`local_feature_size=None`): the paper's premise that a larger patch means
more parameters holds only there. Tables IV and V use the default (f_i pooled to 6 x 6), which
at the paper's P = 48 is the same network.

The number reported is the paper's: each run's mean test accuracy over its last 10 epochs
(all of them for a run of E < 10: min(10, E), as the tables say), then mean ± std over seeds
(the std left blank for one seed).

The backbones table's rows are the paper's U-Net and each backbone spec it is given
(:func:`backbone_settings`). A spec whose library (timm, torchvision) does not import here is
not trained: its row says "not run" and why, so the table never drops a backbone silently.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbones import LibraryMissingError
from ..config import UNET, LNLConfig, check_backbone_spec
from ..data.datasets import SYNTHETIC
from ..data.sources import list_dataset
from ..errors import ParameterError
from ..model import LNLAttenNet, count_parameters
from . import metrics
from .settings import TrainSettings
from .trainer import LAST_EPOCHS_AVERAGED

__all__ = ["Setting", "SWEEPS", "PAPER", "PAPER_DATASETS", "DEFAULT_BACKBONES", "BACKBONE_ONLY", "run_dir",
           "is_finished", "backbone_settings", "parameter_split", "parameter_count", "backbone_not_run",
           "check_dataset", "collect", "write_tables"]


@dataclass(frozen=True)
class Setting:
    name: str  # as the paper's table labels it
    slug: str  # its directory under the sweep's out
    model: dict  # the LNLConfig fields it sets


def _natural(**fields) -> dict:
    return dict(fields, local_feature_size=None)


#: The backbones table's rows after the U-Net unless others are given: ResNet-18, ResNet-50 and
#: ConvNeXt-T, families whose levels lnlatten_fast.backbones chooses and whose models take any
#: input size (timm builds a ViT for one size: name one only at that `image_size`).
DEFAULT_BACKBONES = ("torchvision:resnet18", "torchvision:resnet50", "timm:convnext_tiny")
#: Train fields that fit one backbone, not the U-Net row and every backbone alike.
BACKBONE_ONLY = ("backbone_levels", "backbone_weights", "freeze_backbone_epochs", "backbone_lr_scale")


def backbone_settings(specs) -> list[Setting]:
    """The backbones table's rows: the paper's U-Net, then each of the backbone `specs` in order
    (unet or a repeated spec once). ParameterError("backbones") for a malformed spec."""
    rows = {UNET: Setting(UNET, UNET, dict(backbone=UNET))}
    for spec in specs:
        try:
            check_backbone_spec(spec)
        except ParameterError as error:
            raise ParameterError("backbones", error.problem) from None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec)  # a directory name on every file system
        clash = next((row.name for row in rows.values() if row.slug == slug and row.name != spec), None)
        if clash is not None:
            raise ParameterError("backbones", f"{clash} and {spec} would share the run directory {slug}")
        rows.setdefault(spec, Setting(spec, slug, dict(backbone=spec)))
    return list(rows.values())


#: Every sweep: the swept quantity's label and its settings, in the paper's order (the backbones
#: table's: the defaults, see `backbone_settings`).
SWEEPS: dict[str, tuple[str, list[Setting]]] = {
    "variants": ("model", [
        Setting("Model-S", "simple", dict(variant="simple")),
        Setting("Model-Local", "local", dict(variant="local")),
        Setting("Model-NonLocal", "nonlocal", dict(variant="nonlocal")),
        Setting("LNLAttenNet", "full", dict(variant="full")),
    ]),
    "alpha": ("α", [Setting(f"{a / 10:g}", f"alpha-{a / 10:.1f}", dict(alpha=a / 10)) for a in range(11)]),
    "patches": ("M", [Setting(str(m), f"M-{m}", _natural(num_patches=m)) for m in (4, 9, 16, 25, 36)]),
    "overlap": ("N", [Setting(str(n), f"N-{n}", _natural(overlap=n)) for n in (4, 8, 12, 16, 20, 24)]),
    "backbones": ("backbone", backbone_settings(DEFAULT_BACKBONES)),
}
TABLES = {"variants": "IV", "alpha": "V", "patches": "VI", "overlap": "VII"}  # the backbones table is ours

#: Our dataset names -> the column or row the paper's tables give them.
PAPER_DATASETS = {"affectnet": "AffectNet", "rafdb": "RAF", "sfew": "SFEW", "ckplus": "CK+"}
#: The paper's accuracies (%), by sweep, paper dataset and setting name (tables IV-VII).
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "variants": {
        "AffectNet": {"Model-S": 56.26, "Model-Local": 57.63, "Model-NonLocal": 58.09, "LNLAttenNet": 59.28},
        "RAF": {"Model-S": 83.80, "Model-Local": 84.55, "Model-NonLocal": 85.04, "LNLAttenNet": 86.15},
        "SFEW": {"Model-S": 54.82, "Model-Local": 56.42, "Model-NonLocal": 55.73, "LNLAttenNet": 57.80},
        "CK+": {"Model-S": 94.14, "Model-Local": 96.44, "Model-NonLocal": 96.63, "LNLAttenNet": 98.18},
        "MMI": {"Model-S": 63.52, "Model-Local": 65.42, "Model-NonLocal": 66.56, "LNLAttenNet": 68.75},
    },
    "alpha": {
        row: dict(zip([f"{a / 10:g}" for a in range(11)], values)) for row, values in {
            "RAF": (84.09, 85.60, 85.69, 86.15, 85.59, 85.33, 85.17, 85.23, 83.74, 83.54, 83.02),
            "SFEW": (55.06, 55.73, 56.88, 57.80, 57.34, 57.11, 56.65, 56.88, 55.96, 54.59, 53.67),
            "CK+": (96.02, 96.75, 97.56, 98.18, 98.30, 97.74, 97.36, 96.60, 96.22, 96.04, 95.28),
            "MMI": (67.00, 67.45, 68.50, 68.75, 68.88, 68.25, 67.50, 67.38, 66.93, 66.50, 66.25),
            "AffectNet": (57.94, 58.71, 59.43, 59.28, 58.03, 57.80, 56.83, 56.86, 56.71, 56.66, 56.63),
        }.items()
    },
    "patches": {
        row: dict(zip(("4", "9", "16", "25", "36"), values)) for row, values in {
            "RAF": (84.97, 85.66, 86.15, 85.53, 85.63),
            "SFEW": (55.28, 56.88, 57.80, 58.03, 57.80),
            "CK+": (96.22, 97.17, 98.18, 97.92, 97.74),
            "MMI": (67.60, 67.90, 68.75, 68.83, 67.13),
            "AffectNet": (58.06, 58.43, 59.28, 59.06, 57.97),
        }.items()
    },
    "overlap": {"RAF": dict(zip(("4", "8", "12", "16", "20", "24"), (84.63, 84.96, 85.29, 86.15, 86.16, 86.24)))},
}
PAPER["backbones"] = {row: {UNET: values["LNLAttenNet"]} for row, values in PAPER["variants"].items()}


#: The localisation figures (synthetic runs) a table shows beside the accuracy.
LOCALIZATION_COLUMNS = ("crucial_mass_ratio", "crucial_rank_corr", "occlusion_own_drop", "occlusion_other_drop")


def run_dir(out: Path, setting: Setting, seed: int) -> Path:
    return Path(out) / setting.slug / f"seed{seed}"


def is_finished(directory: Path) -> bool:
    return (Path(directory) / "summary.json").is_file()


def parameter_split(config: LNLConfig) -> tuple[int, int]:
    """The model's (backbone, head) parameters, counted without allocating them: the U-Net's or
    the backbone's, and the LNL head's."""
    with torch.device("meta"):
        model = LNLAttenNet(config)
    head = count_parameters(model.head)
    return count_parameters(model) - head, head


def parameter_count(config: LNLConfig) -> int:
    """The model's parameters, counted without allocating them."""
    return sum(parameter_split(config))


def backbone_not_run(config: LNLConfig) -> str | None:
    """A backbones-table row checked before anything trains: None when `config.backbone` builds,
    the one-line reason when its library does not import here. Anything else wrong with the
    spec (a module that does not import, an unknown model, a backbone without default levels,
    one that fails as it builds) is ParameterError("backbones") naming the spec."""
    spec = config.backbone
    try:
        parameter_split(config)
        return None
    except LibraryMissingError as error:
        return error.problem
    except ParameterError as error:
        # build_backbone's problems name the spec; another parameter's is quoted to show as its flag
        problem = error.problem if error.parameter == "backbone" else f"{spec}: `{error.parameter}` {error.problem}"
        raise ParameterError("backbones", problem) from None
    except Exception as error:  # noqa: BLE001 - the user's callable or the library failing as it builds
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ParameterError("backbones", f"{spec} fails as it builds ({type(error).__name__}: {reason})") from None


def check_dataset(settings: TrainSettings) -> None:
    """List the dataset on disk that every run of `settings` will read, once: a missing
    `data_root`, or one without the dataset's layout, is refused before any run starts."""
    if settings.dataset != SYNTHETIC:
        list_dataset(settings.dataset, settings.data_root)


def collect(out: Path, sweep: str, seeds: list[int], parameters: dict[str, int | None],
            settings: list[Setting] | None = None, split: dict[str, tuple[int, int] | None] | None = None,
            not_run: dict[str, str] | None = None) -> list[dict]:
    """One row per setting (`settings`, the sweep's own unless given): its parameter count
    (`parameters`, by slug; `split` into backbone and head, by slug, where given), the finished
    seeds' accuracies (%), how many epochs each of them averaged (`averaged`: min(10, E), None
    for a summary that does not say) and, for a setting in `not_run`, why it was not trained."""
    rows = []
    for setting in SWEEPS[sweep][1] if settings is None else settings:
        accuracies, averaged, localizations = [], [], []
        for seed in seeds:
            path = run_dir(out, setting, seed) / "summary.json"
            if path.is_file():
                summary = json.loads(path.read_text())
                accuracies.append(100.0 * summary["test_accuracy_last10_mean"])
                epochs = summary.get("epochs")  # summaries from before `epochs_averaged` say only this
                averaged.append(summary.get("epochs_averaged",
                                            None if epochs is None else min(LAST_EPOCHS_AVERAGED, epochs)))
                if "localization" in summary:
                    localizations.append(summary["localization"])
        mean, std = metrics.mean_std(accuracies) if accuracies else (math.nan, math.nan)
        row = dict(setting=setting.name, slug=setting.slug, parameters=parameters[setting.slug],
                   seeds=len(accuracies), accuracy_mean=mean, accuracy_std=std if len(accuracies) > 1 else None,
                   accuracies=accuracies, averaged=averaged)
        for key in LOCALIZATION_COLUMNS:  # synthetic runs: how well w_g finds the cues, mean over seeds
            values = [found[key] for found in localizations if found.get(key) is not None]
            row[key] = sum(values) / len(values) if values else None
        if split is not None:
            row["backbone_parameters"], row["head_parameters"] = split.get(setting.slug) or (None, None)
        row["not_run"] = (not_run or {}).get(setting.slug)
        rows.append(row)
    return rows


def _cell(row: dict) -> str:
    if row.get("not_run"):
        return "not run: " + row["not_run"].replace("|", "\\|")  # a | would end the markdown cell
    if not row["seeds"]:
        return "—"
    if row["seeds"] == 1:
        return f"{row['accuracy_mean']:.2f}"
    return f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}"


def _count(value) -> str:
    return "—" if value is None else f"{value:,}"


def _number(value) -> str:
    """Two decimals; "—" where there is nothing to show (no run, or a correlation of constant w_g)."""
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def _averaged_epochs(rows: list[dict]) -> str:
    """What each run's number is the mean of: "the last 10 epochs", "the last 2 epochs" where
    every run trained 2, or "the last min(10, E) epochs" where the runs' E differ."""
    counts = {count for row in rows for count in row["averaged"]}
    counts = {LAST_EPOCHS_AVERAGED if count is None else count for count in counts} or {LAST_EPOCHS_AVERAGED}
    if len(counts) > 1:
        return f"the last min({LAST_EPOCHS_AVERAGED}, E) epochs of a run of E"
    count = counts.pop()
    return "the last epoch" if count == 1 else f"the last {count} epochs"


def write_tables(out: Path, sweep: str, rows: list[dict], dataset: str, description: str) -> tuple[Path, Path]:
    """OUT/table.md in the paper's layout (ours beside the paper's numbers when the dataset is
    one of the paper's) and OUT/table.csv, one row per setting."""
    out = Path(out)
    label, _ = SWEEPS[sweep]
    paper_row = PAPER_DATASETS.get(dataset)
    paper = PAPER[sweep].get(paper_row, {}) if paper_row else {}
    seeds = max((row["seeds"] for row in rows), default=0)
    table_name = f"Table {TABLES[sweep]}" if sweep in TABLES else f"The {sweep} table"
    title = (f"{table_name} on {dataset}: test accuracy (%), mean of {_averaged_epochs(rows)}"
             + (f", mean ± std over {seeds} seeds" if seeds > 1 else ""))
    lines = [f"# {title}", "", description, ""]
    backbones = sweep == "backbones"
    if sweep == "variants" or backbones:  # the paper's table IV, and ours like it: one row per model
        localized = any(row["crucial_mass_ratio"] is not None for row in rows)
        head = [label if backbones else "model", "parameters"]
        head += ["backbone parameters", "head parameters"] if backbones else []
        head += [f"ours ({dataset})"] + ([f"paper ({paper_row})"] if paper else [])
        head += ["w_g mass on cues (× uniform)", "Spearman(w_g, cue area)"] if localized else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [row["setting"], _count(row["parameters"])]
            cells += [_count(row.get("backbone_parameters")), _count(row.get("head_parameters"))] if backbones else []
            cells += [_cell(row)]
            cells += [_number(paper.get(row["setting"]))] if paper else []
            cells += [_number(row["crucial_mass_ratio"]), _number(row["crucial_rank_corr"])] if localized else []
            lines.append("| " + " | ".join(cells) + " |")
    else:  # tables V-VII: the swept value across, one row per quantity
        head = [label] + [row["setting"] for row in rows]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines.append("| " + " | ".join([f"ours ({dataset})"] + [_cell(row) for row in rows]) + " |")
        if paper:
            lines.append("| " + " | ".join([f"paper ({paper_row})"] + [f"{paper[row['setting']]:.2f}" for row in rows]) + " |")
        lines.append("| " + " | ".join(["parameters"] + [f"{row['parameters']:,}" for row in rows]) + " |")
        if any(row["crucial_mass_ratio"] is not None for row in rows):
            lines.append("| " + " | ".join(["w_g mass on cues (× uniform)"]
                                           + [_number(row["crucial_mass_ratio"]) for row in rows]) + " |")
    markdown = out / "table.md"
    markdown.write_text("\n".join(lines) + "\n")
    table = out / "table.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        own = ["backbone_parameters", "head_parameters", "not_run"] if backbones else []
        writer.writerow([label, "parameters", "seeds", "accuracy_mean", "accuracy_std", "paper", *LOCALIZATION_COLUMNS,
                         *own])
        for row in rows:
            writer.writerow([row["setting"], "" if row["parameters"] is None else row["parameters"], row["seeds"],
                             "" if not row["seeds"] else f"{row['accuracy_mean']:.4f}",
                             "" if row["accuracy_std"] is None else f"{row['accuracy_std']:.4f}",
                             paper.get(row["setting"], ""),
                             *("" if row[key] is None else f"{row[key]:.4f}" for key in LOCALIZATION_COLUMNS),
                             *("" if row.get(key) is None else row[key] for key in own)])
    return markdown, table
