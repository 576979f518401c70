#!/usr/bin/env python
"""Whole-step profiler without a GPU: one training step, exactly as the trainer runs it, traced
on meta tensors for a named GPU, and an ESTIMATE of its time and of the protocol's wall clock.

    python bench/profile_step.py --arch sm_90a --preset paper --batch 64 --precision bf16 \
        --mode {eager,compiled} [--dataset-size TRAIN,TEST] --out DIR

Writes DIR/step.json and DIR/step.md (the table is printed too). Per op and in total: launches,
FLOPs, bytes read and written (from shapes and dtypes), host syncs, estimated time; the step in
ms, img/s and % of the FLOP floor; per epoch at the dataset size (RAF-DB by default: 12,271
train and 3,068 test images) the evaluation, the checkpoint bytes and the attention trace; the
24-epoch protocol's wall clock, warm-up included. step.json's `totals` holds launches,
non_gemm_bytes, optimizer_bytes, host_syncs_per_step, est_step_ms, est_images_per_second,
floor_fraction and est_protocol_seconds.

ESTIMATES, NOT MEASUREMENTS: nothing runs on a GPU. The rules and the fixed table are in
bench/gpu_target/counting.py and targets.py, and in step.md. `--mode compiled` lowers the
compiled step with inductor for the CPU (this torch cannot lower for CUDA without one; see
bench/gpu_target/inductor.py) and says so in the report.

The Triton kernels the step launches are compiled for the arch as the compile report does (a
stand-in driver; set TRITON_CACHE_DIR to reuse its cubins). Exit status 0, 1 when a kernel
failed to compile, 2 for bad input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gpu_target.cli import command, Parser, UsageError, positive_int, run_main, use_checkout
from gpu_target.targets import ARCHS, PEAKS, STEP_TABLE

FLAGS = ("--arch", "--preset", "--batch", "--precision", "--mode", "--dataset-size", "--out")
PRECISIONS = ("bf16", "fp32")
MODES = ("eager", "compiled")
RAFDB = (12271, 3068)  # RAF-DB basic: train, test
# The count of the eager step before issue 18 (the review's), for comparison.
BASELINE = {"launches": 630, "non_gemm_gb": 17.7, "optimizer_gb": 7.2, "host_syncs": 3}


def parse_args(argv):
    parser = Parser(description=__doc__.split("\n")[0], add_help=True, flags=FLAGS)
    for flag in FLAGS:
        parser.add_argument(flag)
    args = parser.parse_args(argv)
    for flag in ("arch", "preset", "batch", "precision", "mode", "out"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag}: expected a value (required)")
    if args.arch not in ARCHS:
        raise UsageError(f"--arch {args.arch}: expected one of {', '.join(ARCHS)}")
    if ARCHS[args.arch].capability not in PEAKS:
        raise UsageError(f"--arch {args.arch}: expected an arch with datasheet peaks "
                         f"({', '.join(a for a, s in ARCHS.items() if s.capability in PEAKS)})")
    use_checkout()
    from lnlatten_fast.config import PRESETS

    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset}: expected {' or '.join(PRESETS)}")
    args.batch = positive_int("--batch", args.batch)
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision {args.precision}: expected {' or '.join(PRECISIONS)}")
    if args.mode not in MODES:
        raise UsageError(f"--mode {args.mode}: expected {' or '.join(MODES)}")
    if args.dataset_size is None:
        args.dataset_size, args.dataset_name = RAFDB, "RAF-DB"
    else:
        parts = args.dataset_size.split(",")
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            sizes = ()
        if len(sizes) != 2 or min(sizes) <= 0 or ",".join(map(str, sizes)) != args.dataset_size.replace(" ", ""):
            raise UsageError(f"--dataset-size {args.dataset_size}: expected TRAIN,TEST (two positive integers)")
        args.dataset_size, args.dataset_name = sizes, "given size"
    args.out = Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: expected a directory (it is a file)")
    return args


def run(args) -> int:
    from gpu_target.driver import require_triton

    require_triton(args.arch)
    import torch

    import lnlatten_fast as lf
    from gpu_target import inductor, profile, profile_report as pr
    from gpu_target.profile_render import RULES, render
    from gpu_target.ptx import build_rows
    from gpu_target.tracing import Tracker, patched, simplenet_layers
    from gpu_target.driver import stand_in
    from lnlatten_fast.accounting import training_step_flops
    from lnlatten_fast.config import PRESETS
    from lnlatten_fast.training.settings import TrainSettings

    start = time.perf_counter()
    spec, peaks = ARCHS[args.arch], PEAKS[ARCHS[args.arch].capability]
    cfg = lf.LNLConfig.preset(args.preset).replace(backend="triton")
    defaults = TrainSettings()
    lr = PRESETS[args.preset].lr
    weight_decay = 2 * cfg.l2_lambda  # the trainer's default l2_mode, "decoupled"
    crop = cfg.image_size // 16  # the trainer's default crop padding
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile_errors.log").unlink(missing_ok=True)

    tracker = Tracker(args.out)
    tracker.dtype = args.precision
    layers = simplenet_layers(cfg)
    with patched(spec.sms, tracker.record_plan) as patches, stand_in(spec, tracker):
        trace = profile.trace_eager(cfg, args.batch, args.precision, lr, weight_decay, crop, tracker, layers,
                                    args.dataset_size[1], defaults.trace_images)
    rows = build_rows(tracker, spec)
    by_hash = {row["hash"]: row for row in rows}
    for name in ("first_step", "step", "eval_1", "eval_2", "trace_record"):
        pr.assign_seconds(trace[name], tracker.launches, by_hash, spec, peaks)

    records = trace["step"]
    compiled_with = "not compiled: the eager step"
    ind_summary = None
    compile_seconds = 0.0
    if args.mode == "compiled":
        result = inductor.compile_step(cfg, args.batch, args.precision, lr, weight_decay)
        ind_summary = inductor.summarise(result)
        compile_seconds = result["seconds"]
        records = compiled_records(trace["step"], result["cuda_rows"], peaks)
        compiled_with = ("inductor's CPU graph of the compiled TrainStep (forward, loss, backward and AdamW in one "
                         "graph), code generation only; NOT CUDA (no GPU, and this torch cannot lower for CUDA "
                         "without one): kernels counted from its scheduler, the optimizer's per-tensor kernels "
                         "regrouped as CUDA's foreach combo kernels, GEMMs as extern calls, the Triton ops and the "
                         "data pipeline from the eager trace")

    peak = peaks.tensor_16bit if args.precision == "bf16" else peaks.tensor_tf32
    floor_flops = training_step_flops(cfg) * args.batch
    totals = pr.totals(records, args.batch, floor_flops, peak)
    seconds = lambda recs: sum(r["seconds"] for r in recs)  # noqa: E731
    from lnlatten_fast.training import checkpoint as checkpoint_module

    protocol = pr.protocol(
        step_seconds=totals["est_step_ms"] / 1e3, first_step_seconds=seconds(trace["first_step"]),
        eval_one=seconds(trace["eval_1"]), eval_two=seconds(trace["eval_2"]),
        trace_seconds=seconds(trace["trace_record"]), checkpoint=trace["checkpoint"],
        background_writer=hasattr(checkpoint_module, "CheckpointWriter"), train=args.dataset_size[0],
        test=args.dataset_size[1], batch=args.batch, epochs=defaults.epochs, trace_every=defaults.trace_every,
        jit_seconds=sum(c["compile_seconds"] or 0.0 for c in tracker.compiled.values()),
        compile_seconds=compile_seconds, peaks=peaks)
    totals["est_protocol_seconds"] = protocol["est_protocol_seconds"]

    report = {
        "label": pr.LABEL,
        "arch": args.arch, "gpu": peaks.gpu, "preset": args.preset, "batch": args.batch,
        "precision": args.precision, "mode": args.mode,
        "dataset": {"name": args.dataset_name, "train": args.dataset_size[0], "test": args.dataset_size[1]},
        "step_api": trace["step_api"], "optimizer": trace["optimizer"], "compiled_with": compiled_with,
        "totals": totals,
        "analytic_gflop_per_image": training_step_flops(cfg) / 1e9,
        "phases": pr.by_phase(records),
        "syncs": pr.syncs(records),
        "ops": pr.grouped(records),
        "ops_shown": 60,
        "protocol": protocol,
        "checkpoint": trace["checkpoint"],
        "parameters": trace["parameters"],
        "inductor": ind_summary,
        "triton": {"binaries": len(rows), "launches_per_step": sum(1 for r in trace["step"] if r["kind"] == "triton"),
                   "jit_builds": sum(1 for c in tracker.compiled.values() if not c["cache_hit"]),
                   "failures": tracker.failures},
        "not_traced": [
            "the trainer loop's own bookkeeping around the step (loss sums, the divergence check's read-back every "
            "few steps, the progress bar)",
            "auto's conv timing (the profile runs the triton backend)",
            "cudnn.benchmark's search and the CUDA-graph capture (warm-up)",
        ],
        "peaks": {**vars(peaks)}, "table": {**vars(STEP_TABLE)},
        "rules": RULES, "patches": patches + trace["patches"],
        "baseline": BASELINE,
        "evaluation": {"one_batch_ms": seconds(trace["eval_1"]) * 1e3, "two_batches_ms": seconds(trace["eval_2"]) * 1e3,
                       "syncs_per_call": sum(1 for r in trace["eval_1"] if r["sync"])},
        "trace_record_ms": seconds(trace["trace_record"]) * 1e3,
        "torch_version": torch.__version__,
        "records": records,
    }
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "step.json").write_text(json.dumps(report, indent=1, default=str))
    markdown = render(report)
    (args.out / "step.md").write_text(markdown)
    tracker.print_failures()
    print(markdown)
    print(f"{totals['launches']} launches, {totals['est_step_ms']:.2f} ms estimated per step, "
          f"{report['wall_seconds']} s; wrote {args.out / 'step.json'} and {args.out / 'step.md'}")
    return 1 if tracker.failures else 0


def compiled_records(eager: list, cuda_rows: list, peaks) -> list:
    """The compiled step's records: the eager trace's data pipeline and Triton ops (launches and
    their wrappers' own aten ops), and inductor's graph (inductor.py) for everything else."""
    from gpu_target.estimate import op_seconds
    from gpu_target.targets import peak_flops

    kept = [r for r in eager if r["phase"] == "data" or r["kind"] == "triton" or r["inside"]]
    out = list(kept)
    for row in cuda_rows:
        if row["kind"] == "triton op":
            continue
        dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(row["dtype"], row["dtype"])
        kind = "gemm" if row["kind"] == "extern gemm" else "memory"
        phase = "optimizer" if row.get("foreach") else "graph"
        peak = peak_flops(peaks, dtype or "fp32")
        out.append({"op": f"inductor {row['kind']}", "part": row["name"][:80], "phase": phase, "inside": None,
                    "launches": row["launches"], "flops": row["flops"], "read": row["bytes"], "written": 0,
                    "transfer": 0, "kind": kind, "dtype": dtype, "sync": None, "shape": None, "note": "",
                    "seconds": op_seconds(row["flops"], row["bytes"], row["launches"], peak, peaks),
                    "bound": "compute" if kind == "gemm" else "memory"})
    return out


main = command(parse_args, run)


if __name__ == "__main__":
    run_main(main)
