"""The paper's ablations (tables IV-VII) as sweeps of training runs, and their tables.

A sweep is a list of settings, each a few LNLConfig fields on top of whatever else the run is
given; every (setting, seed) trains in its own run directory, OUT/<setting>/seed<k>, so a
finished one is found again (its summary.json) and skipped. Tables VI and VII keep SimpleNet's
natural P // 8 output (`local_feature_size=None`): the paper's premise that a larger patch means
more parameters holds only there. Tables IV and V use the default (f_i pooled to 6 x 6), which
at the paper's P = 48 is the same network.

The number reported is the paper's: each run's mean test accuracy over its last 10 epochs
(all of them for a run of E < 10: min(10, E), as the tables say), then mean ± std over seeds
(the std left blank for one seed).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LNLConfig
from ..data.datasets import SYNTHETIC
from ..data.sources import list_dataset
from ..model import LNLAttenNet, count_parameters
from . import metrics
from .settings import TrainSettings
from .trainer import LAST_EPOCHS_AVERAGED

__all__ = ["Setting", "SWEEPS", "PAPER", "PAPER_DATASETS", "run_dir", "is_finished", "parameter_count",
           "check_dataset", "collect", "write_tables"]


@dataclass(frozen=True)
class Setting:
    name: str  # as the paper's table labels it
    slug: str  # its directory under the sweep's out
    model: dict  # the LNLConfig fields it sets


def _natural(**fields) -> dict:
    return dict(fields, local_feature_size=None)


#: Every sweep: the swept quantity's label and its settings, in the paper's order.
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
}
TABLES = {"variants": "IV", "alpha": "V", "patches": "VI", "overlap": "VII"}

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


#: The localisation figures (synthetic runs) a table shows beside the accuracy.
LOCALIZATION_COLUMNS = ("crucial_mass_ratio", "crucial_rank_corr", "occlusion_own_drop", "occlusion_other_drop")


def run_dir(out: Path, setting: Setting, seed: int) -> Path:
    return Path(out) / setting.slug / f"seed{seed}"


def is_finished(directory: Path) -> bool:
    return (Path(directory) / "summary.json").is_file()


def parameter_count(config: LNLConfig) -> int:
    """The model's parameters, counted without allocating them."""
    with torch.device("meta"):
        return count_parameters(LNLAttenNet(config))


def check_dataset(settings: TrainSettings) -> None:
    """List the dataset on disk that every run of `settings` will read, once: a missing
    `data_root`, or one without the dataset's layout, is refused before any run starts."""
    if settings.dataset != SYNTHETIC:
        list_dataset(settings.dataset, settings.data_root)


def collect(out: Path, sweep: str, seeds: list[int], parameters: dict[str, int]) -> list[dict]:
    """One row per setting: its parameter count (`parameters`, by slug), the finished seeds'
    accuracies (%) and how many epochs each of them averaged (`averaged`: min(10, E), None for
    a summary that does not say)."""
    rows = []
    for setting in SWEEPS[sweep][1]:
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
        rows.append(row)
    return rows


def _cell(row: dict) -> str:
    if not row["seeds"]:
        return "—"
    if row["seeds"] == 1:
        return f"{row['accuracy_mean']:.2f}"
    return f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}"


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
    title = (f"Table {TABLES[sweep]} on {dataset}: test accuracy (%), mean of {_averaged_epochs(rows)}"
             + (f", mean ± std over {seeds} seeds" if seeds > 1 else ""))
    lines = [f"# {title}", "", description, ""]
    if sweep == "variants":  # the paper's table IV: one row per model
        localized = any(row["crucial_mass_ratio"] is not None for row in rows)
        head = ["model", "parameters", f"ours ({dataset})"] + ([f"paper ({paper_row})"] if paper else [])
        head += ["w_g mass on cues (× uniform)", "Spearman(w_g, cue area)"] if localized else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [row["setting"], f"{row['parameters']:,}", _cell(row)]
            cells += [f"{paper[row['setting']]:.2f}"] if paper else []
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
        writer.writerow([label, "parameters", "seeds", "accuracy_mean", "accuracy_std", "paper", *LOCALIZATION_COLUMNS])
        for row in rows:
            writer.writerow([row["setting"], row["parameters"], row["seeds"],
                             "" if not row["seeds"] else f"{row['accuracy_mean']:.4f}",
                             "" if row["accuracy_std"] is None else f"{row['accuracy_std']:.4f}",
                             paper.get(row["setting"], ""),
                             *("" if row[key] is None else f"{row[key]:.4f}" for key in LOCALIZATION_COLUMNS)])
    return markdown, table
