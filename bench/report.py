#!/usr/bin/env python
"""The README's performance tables from pytest-benchmark JSON.

    python bench/report.py RESULTS.json [--out TABLE.md]

One markdown table per benchmark group: the machine, versions and date first; then per row
the median time, images/s, achieved GFLOP/s, % of the matmul peak measured in the same run
(`of_peak`; MFU on a GPU), and the ratio to `reference` in the same group (> 1 is faster).
Ratios, not absolute times, are the claim: the rows of a group ran side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def _label(bench: dict) -> str:
    info = bench.get("extra_info", {})
    if "backend" in info:
        return info["backend"]
    params = bench.get("params") or {}
    return params.get("backend") or bench["name"]


def render(data: dict) -> str:
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    cpu = machine.get("cpu", {})
    lines = [
        f"Measured {data.get('datetime', '?')[:19].replace('T', ' ')} on {machine.get('node', '?')}: "
        f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} CPUs; "
        f"Python {machine.get('python_version', '?')}; commit {str(commit.get('id', '?'))[:8]}.",
    ]
    peak = next((b["extra_info"].get("matmul_peak_gflop_per_s") for b in data["benchmarks"]
                 if "matmul_peak_gflop_per_s" in b.get("extra_info", {})), None)
    device = next((b["extra_info"].get("device") for b in data["benchmarks"] if "device" in b.get("extra_info", {})), None)
    if peak:
        lines.append(f"Matmul peak measured in the same run on {device}: {peak:.0f} GFLOP/s (the 100% of \"% of peak\").")
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"]].append(bench)
    for group, benches in groups.items():
        reference = next((b for b in benches if _label(b) == "reference"), None)
        lines += ["", f"**{group}**", "", "| backend | median ms | images/s | GFLOP/s | % of peak | vs reference |",
                  "|---|---:|---:|---:|---:|---:|"]
        for bench in sorted(benches, key=lambda b: b["stats"]["median"]):
            info = bench.get("extra_info", {})
            median = bench["stats"]["median"]
            ratio = f"{reference['stats']['median'] / median:.2f}x" if reference else "-"
            images = f"{info['images_per_s']:.1f}" if "images_per_s" in info else "-"
            gflops = f"{info['gflop_per_s']:.0f}" if "gflop_per_s" in info else "-"
            of_peak = f"{100 * info['of_peak']:.0f}%" if "of_peak" in info else "-"
            lines.append(f"| {_label(bench)} | {median * 1e3:.1f} | {images} | {gflops} | {of_peak} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    path = Path(args.results)
    try:
        data = json.loads(path.read_text())
        benchmarks = data["benchmarks"]
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {path}: expected pytest-benchmark JSON ({error})", file=sys.stderr)
        return 2
    if not benchmarks:
        print(f"error: {path}: holds no benchmarks", file=sys.stderr)
        return 2
    text = render(data)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
