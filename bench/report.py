#!/usr/bin/env python
"""The README's performance tables from pytest-benchmark JSON.

    python bench/report.py RESULTS.json [MORE.json ...] [--out TABLE.md] [--noisy-above 0.10]

Each JSON file is one benchmark run: one date, one machine. One markdown table per benchmark
group, the rows of every run together: the runs' machines, versions and dates first; then per
row the median time, images/s, achieved GFLOP/s, % of the matmul peak measured in the same run
(MFU on a GPU), the ratio to `reference` (> 1 is faster), and the spread of its rounds
(IQR / median). What it will not claim:
- a ratio between rows of different runs: only rows that ran side by side compare, since load
  moves a whole run by more than the gaps between backends;
- a % of peak above 100%: the row ran faster than the best matmul read in its run, so the peak
  reading is too low to be a 100% ("peak under-read");
- a plain median from a noisy row: a row whose IQR / median exceeds the threshold, or one with
  fewer than MIN_ROUNDS rounds, is flagged, and so is every ratio it takes part in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# A row is noisy when the IQR of its rounds exceeds 10% of their median. With MIN_ROUNDS rounds
# the median's standard error is about 0.4 IQR (1.25 σ/√5, σ ≈ IQR/1.35): at 10% a median is
# uncertain by ~4% and the ratio of two such medians by ~6%, the size of the smallest gaps
# between backends these tables report (1.03x to 1.10x).
NOISY_ABOVE = 0.10
# The fewest rounds whose median and quartiles mean something (bench/conftest.py times at least
# this many).
MIN_ROUNDS = 5
REFERENCE = "reference"
UNDER_READ = "peak under-read"


@dataclass
class Run:
    """One pytest-benchmark JSON: rows in it ran side by side on one machine."""

    number: int
    path: Path
    data: dict
    benchmarks: list = field(default_factory=list)

    @property
    def identity(self) -> tuple:
        return self.data.get("datetime"), json.dumps(self.data.get("machine_info", {}), sort_keys=True)

    @property
    def peak(self) -> float | None:
        """The best matmul GFLOP/s read in this run (bench/conftest.py's interleaved readings)."""
        readings = [b["extra_info"]["matmul_peak_gflop_per_s"] for b in self.benchmarks
                    if "matmul_peak_gflop_per_s" in b.get("extra_info", {})]
        readings.append(self.data.get("matmul_peak", {}).get("gflop_per_s"))
        readings = [r for r in readings if r]
        return max(readings) if readings else None

    def describe(self) -> list[str]:
        machine = self.data.get("machine_info", {})
        commit = self.data.get("commit_info", {})
        cpu = machine.get("cpu", {})
        lines = [
            f"Measured {str(self.data.get('datetime', '?'))[:19].replace('T', ' ')} on {machine.get('node', '?')}: "
            f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} CPUs; "
            f"Python {machine.get('python_version', '?')}; commit {str(commit.get('id', '?'))[:8]}.",
        ]
        device = next((b["extra_info"]["device"] for b in self.benchmarks if "device" in b.get("extra_info", {})), None)
        if self.peak:
            readings = len(self.data.get("matmul_peak", {}).get("readings", []))
            how = f" Best of {readings} readings interleaved with the benchmarks." if readings else ""
            lines.append(f"Matmul peak measured in the same run on {device}: {self.peak:.0f} GFLOP/s "
                         f"(the 100% of \"% of peak\").{how}")
        return lines


def _label(bench: dict) -> str:
    info = bench.get("extra_info", {})
    if "backend" in info:
        return info["backend"]
    params = bench.get("params") or {}
    return params.get("backend") or bench["name"]


def spread(stats: dict, noisy_above: float) -> tuple[str, str | None]:
    """The spread column's text, and why the row's median is not to be trusted (None: it is)."""
    rounds, iqr = stats.get("rounds"), stats.get("iqr")
    if iqr is None:
        return "-", None
    text = f"{100 * iqr / stats['median']:.0f}%"
    if rounds is not None and rounds < MIN_ROUNDS:
        return f"{text}, too few rounds ({rounds})", "too few rounds"
    if iqr / stats["median"] > noisy_above:
        return f"{text} noisy", "noisy"
    return text, None


def _milliseconds(seconds: float) -> str:
    digits = 1 if seconds >= 0.01 else 2 if seconds >= 0.001 else 3
    return f"{seconds * 1e3:.{digits}f}"


def of_peak(info: dict, peak: float | None) -> str:
    if "gflop_per_s" in info and peak:
        fraction = info["gflop_per_s"] / peak
    elif "of_peak" in info:
        fraction = info["of_peak"]
    else:
        return "-"
    return UNDER_READ if fraction > 1 else f"{100 * fraction:.0f}%"


def render(runs: list[Run], noisy_above: float = NOISY_ABOVE) -> str:
    several = len(runs) > 1
    lines = []
    for run in runs:
        described = run.describe()
        lines += [f"Run {run.number} ({run.path.name}): {described[0]}", *described[1:]] if several else described
    groups = defaultdict(list)
    for run in runs:
        for bench in run.benchmarks:
            groups[bench.get("group") or bench["name"]].append((run, bench))
    flagged, under_read = 0, False
    for group, rows in groups.items():
        references = {run.number: bench for run, bench in rows if _label(bench) == REFERENCE}
        spreads = {id(bench): spread(bench["stats"], noisy_above) for _, bench in rows}
        header = "| backend | median ms | images/s | GFLOP/s | % of peak | vs reference | IQR / median |"
        rule = "|---|---:|---:|---:|---:|---:|---:|"
        if several:
            header, rule = header + " run |", rule + "---:|"
        lines += ["", f"**{group}**", "", header, rule]
        other_runs = set()
        for run, bench in sorted(rows, key=lambda row: row[1]["stats"]["median"]):
            info = bench.get("extra_info", {})
            median = bench["stats"]["median"]
            reference = references.get(run.number)
            if reference is not None:
                ratio = f"{reference['stats']['median'] / median:.2f}x"
                doubt = sorted({spreads[id(bench)][1], spreads[id(reference)][1]} - {None})
                if doubt:
                    ratio += f" ({', '.join(doubt)})"
            elif references:
                ratio = "other run"
                other_runs.add(run.number)
            else:
                ratio = "-"
            images = f"{info['images_per_s']:.1f}" if "images_per_s" in info else "-"
            gflops = f"{info['gflop_per_s']:.0f}" if "gflop_per_s" in info else "-"
            spread_text, doubt = spreads[id(bench)]
            flagged += doubt is not None
            percent = of_peak(info, run.peak)
            under_read |= percent == UNDER_READ
            row = (f"| {_label(bench)} | {_milliseconds(median)} | {images} | {gflops} | {percent} | "
                   f"{ratio} | {spread_text} |")
            lines.append(row + (f" {run.number} |" if several else ""))
        if other_runs:
            lines += ["", f"No ratio for the rows of run {', '.join(map(str, sorted(other_runs)))}: this group's "
                          f"reference was measured in run {', '.join(map(str, sorted(references)))}, and a ratio "
                          "holds only between rows measured side by side in one run."]
    total = sum(len(run.benchmarks) for run in runs)
    lines += ["", f"{flagged} of {total} rows flagged (IQR / median above {100 * noisy_above:.0f}%, or fewer than "
                  f"{MIN_ROUNDS} rounds): their medians, and the ratios they take part in, are not claims."]
    if under_read:
        lines.append(f"{UNDER_READ}: the row ran faster than the best matmul read in its run, so that reading is "
                     "too low to be its 100%.")
    return "\n".join(lines) + "\n"


def load(paths: list[Path]) -> list[Run]:
    """The runs in `paths`, one per distinct (datetime, machine): files of one run merge."""
    runs: dict[tuple, Run] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
            benchmarks = data["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: expected pytest-benchmark JSON ({error})") from None
        if not benchmarks:
            raise ValueError(f"{path}: holds no benchmarks")
        run = Run(len(runs) + 1, path, data)
        run = runs.setdefault(run.identity, run)
        run.benchmarks.extend(benchmarks)
    return list(runs.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument("--noisy-above", type=float, default=NOISY_ABOVE,
                        help=f"flag rows whose IQR / median exceeds this (default {NOISY_ABOVE})")
    args = parser.parse_args(argv)
    if not args.noisy_above > 0:
        parser.error(f"--noisy-above: expected a fraction above 0, got {args.noisy_above}")
    try:
        runs = load(args.results)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = render(runs, args.noisy_above)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
