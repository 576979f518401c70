#!/usr/bin/env python
"""The trainer's step, measured on a GPU: eager, compiled, and compiled + CUDA graphs.

    python bench/step_timing.py [--preset paper] [--batch 64] [--precision bf16] \
        [--modes eager,compiled,graphs] [--steps 30] [--json OUT.json] [--estimates DIR]

Each mode builds the model the trainer builds (seed 0, channels-last, `auto` backend), the
trainer's optimizer and `TrainStep`, and feeds it what the trainer's loader feeds it: a pinned
uint8 batch through `pipeline.device_batch` with the flip and crop drawn on the device. The
warm-up (auto's conv timing, Triton JIT, compile, capture) is timed on its own; then `--steps`
steps are timed with CUDA events around the loop, with one synchronisation at the end.
With `--estimates DIR`, each mode's row shows the profiler's estimate beside it (DIR/eager/
step.json and DIR/compiled/step.json from bench/profile_step.py). Measurements of this machine;
the estimates are estimates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the checkout's package

import lnlatten_fast as lf  # noqa: E402
from lnlatten_fast.data.pipeline import device_batch  # noqa: E402
from lnlatten_fast.training.host_syncs import HostSyncCounter  # noqa: E402
from lnlatten_fast.training.step import TrainStep, build_optimizer  # noqa: E402

MODES = ("eager", "compiled", "graphs")


def measure(mode: str, preset: str, batch: int, precision: str, steps: int) -> dict:
    device = torch.device("cuda")
    cfg = lf.LNLConfig.preset(preset)
    torch.manual_seed(0)
    model = lf.LNLAttenNet(cfg).to(device).channels_last()
    compiled = mode != "eager"
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=2 * cfg.l2_lambda, tensor_lr=compiled)
    step = TrainStep(model, optimizer, precision=precision, device=device, compile=compiled,
                     cuda_graphs=mode == "graphs")
    size = cfg.image_size
    host = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).pin_memory()
    labels = torch.randint(0, cfg.num_classes, (batch,)).pin_memory()
    generator = torch.Generator(device=device).manual_seed(0)

    def batch_on_device():
        return device_batch(host, labels, device, augment_batch=True, generator=generator, crop_padding=size // 16)

    x, y = batch_on_device()
    warmup = step.warm_up(x, y)
    syncs = None
    if mode == "eager":  # a steady-state step, counted on the real device
        with HostSyncCounter() as counter:
            step(*batch_on_device())
        syncs = len(counter.events)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    wall = time.perf_counter()
    start.record()
    for _ in range(steps):
        loss = step(*batch_on_device())
    end.record()
    torch.cuda.synchronize()
    wall = time.perf_counter() - wall
    ms = start.elapsed_time(end) / steps
    return {"mode": mode, "preset": preset, "batch": batch, "precision": precision, "steps": steps,
            "ms_per_step": ms, "images_per_second": batch / ms * 1e3, "host_wall_ms_per_step": wall / steps * 1e3,
            "warmup_seconds": warmup, "host_syncs_per_step": syncs, "final_loss": float(loss),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def _estimate(estimates: Path | None, mode: str) -> dict | None:
    if estimates is None:
        return None
    path = estimates / ("eager" if mode == "eager" else "compiled") / "step.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("totals")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--estimates", type=Path)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in MODES for m in modes):
        print(f"error: --modes {args.modes}: expected a comma list of {', '.join(MODES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: bench/step_timing.py: expected a CUDA device (it measures the GPU step)", file=sys.stderr)
        return 2
    rows = []
    print("| mode | measured ms/step | img/s | warm-up s | host syncs/step | est. ms (profiler) | est. img/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        try:
            row = measure(mode, args.preset, args.batch, args.precision, args.steps)
        except Exception as error:  # noqa: BLE001 - one failing mode must not hide the others' numbers
            row = {"mode": mode, "error": f"{type(error).__name__}: {str(error)[:500]}"}
            print(f"| {mode} | failed: {row['error'][:200]} | | | | | |", flush=True)
            rows.append(row)
            continue
        est = _estimate(args.estimates, mode) or {}
        rows.append(dict(row, estimate=est or None))
        print(f"| {mode} | {row['ms_per_step']:.1f} | {row['images_per_second']:.0f} | {row['warmup_seconds']:.1f} "
              f"| {'-' if row['host_syncs_per_step'] is None else row['host_syncs_per_step']} "
              f"| {est.get('est_step_ms', float('nan')):.1f} | {est.get('est_images_per_second', float('nan')):.0f} |",
              flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
