#!/usr/bin/env python
"""GPU compile check without a GPU: every Triton kernel of one training step, compiled for a named arch.

    python bench/compile_report.py --arch sm_90a --preset paper --batch 64 --dtypes bf16[,fp16,fp32,fp32-exact] --out DIR
        [--image-size N] [--step model|ops]

`--step ops` compiles each op the registry lists for the triton backend on its own (forward and
backward, at the preset's shapes, pooled and unpooled convs), including ops the model's step
does not launch (extract_patches, overlap_add); the op contract tests run it.

What it does
------------
Runs ONE training step of `LNLAttenNet` on the `triton` backend (forward, the `lnl_loss` of the
trainer, backward) at the real shapes, and lets every Triton kernel that step launches go
through Triton's normal JIT path (`kernel[grid](...)` from the real host wrappers in
lnlatten_fast/ops/triton/) for the chosen GPU architecture.
Triton's own compiler and its bundled ptxas build the cubins; they land in TRITON_CACHE_DIR
like any other kernel (a real GPU of that arch with the same Triton and ptxas should compute
the same cache keys; unverified, no GPU here).
Then, per distinct compiled binary (several layers can share one), it reports what the
compiler produced, in DIR/kernels.json and DIR/kernels.md (the table is also printed).

COMPILED, NOT RUN: no GPU executed these kernels. The numbers are static properties of the
binaries; nothing here says how fast, or how correct, they are on the device.

How
---
* Stand-in Triton driver (`_StandInDriver`, installed with `triton.runtime.driver.set_active`):
  reports the target (`GPUTarget("cuda", <capability>, 32)`), device 0, stream 0 and the
  target's device properties (SM count, max shared memory per CTA). `load_binary` loads
  nothing; it reads the cubin's register count with cuobjdump so that Triton's own
  "too many threads for these registers" check behaves as on the device. Its launcher
  launches nothing and records each launch (grid, which binary, which op/layer).
* Meta tensors: the model is built on the meta device, cast to the dtype
  (`model.to(bf16)` gives the ops the bf16 operands they get in bf16 training) and put in
  channels-last, with a channels-last input, as the trainer does. No memory, no data.
  Pointer alignment: Triton specialises a pointer on `data_ptr() % 16`. A meta tensor's
  data_ptr() is storage_offset * element_size from a base of 0, i.e. exactly what a CUDA
  tensor has relative to its (256-byte aligned) allocation, so divisibility by 16 comes out
  as on the GPU; no workaround needed. Integer specialisation (== 1, % 16) sees the real
  sizes and strides.
* Dispatch interception (`_StepInterceptor`, a TorchDispatchMode): on meta tensors the
  `lnlatten_fast::triton_*` custom ops would run their fake implementations, which launch
  nothing. The mode catches them and calls the function each CustomOpDef wraps (the real
  host wrapper) on the meta tensors instead, so the wrapper computes its real block sizes,
  grids and specialisations and launches through the stand-in driver. Autograd still runs
  the ops' registered backward, whose pieces are custom ops too: the mode catches those as
  well. Everything else runs as usual on meta. The package is the checkout's (the repository
  root goes first on sys.path), not an installed copy. A grid past CUDA's launch limits
  counts as a failure: it would compile and then fail to launch.

Patches (small, undone at exit; also listed in the report header):
* `lnlatten_fast.ops.dispatch._AVAILABILITY[("triton", "meta")]`: backend resolution only
  knows "cpu" and "cuda"; this adds meta as usable for the triton backend.
* `lnlatten_fast.ops.triton._common.multiprocessor_count`: off CUDA it counts one SM, which would
  give the grad-weight kernels a different batch split (grid and B_PER_SPLIT argument) than on
  the target; patched to the target's SM count.
* aten.convolution output layout: torch's meta kernel always returns a contiguous output
  ("meta tensors have no device info"), whereas cuDNN returns channels-last when the input or
  the weight is channels-last. F9 (read by the first SimpleNet layer) and Q, K, V (the
  attention's inputs) come out of such convs, and their strides are kernel specialisations,
  so the mode re-strides 4-D conv outputs channels-last by cuDNN's rule.
Other device-dependent host logic, checked and left alone: `_dot_operands` widens bf16 only
for CPU tensors; `_upcast_operands` only under the interpreter (refused here);
`_device.launch_guard` only picks the current CUDA device. The trainer's bf16 autocast is not reproduced (there is
no autocast for meta): casting the model gives the Triton ops the same operands, since under
autocast lnlatten_fast.ops casts inputs, weights and biases to the autocast dtype itself.

Reading the columns (kernels.md; kernels.json has the same and more: cache paths, compile
times, constexprs, every op call with its argument shapes/strides):
* kernel, used by: the kernel's name and every op/layer whose launches used this binary
  (SimpleNet layers 1..6 = patch conv C0->w0, w0->w0 (+pool), w0->w1, w1->w1 (+pool),
  w1->w2, w2->w2 (+pool); derived from the shapes).
* regs: registers per thread (cuobjdump on the cached cubin; ptxas -v agrees, checked).
  spill B: bytes of spill stores + spill loads per thread, from the ptxas -v log of the build
  (a binary that came from the disk cache has no log: its PTX is rebuilt through Triton's own
  make_cubin, same flags, and the rebuilt cubin must equal the cached one byte for byte,
  `ptxas_rerun_identical` in kernels.json; else the spills show as ?). 0 is what you want.
* smem B: shared memory per CTA (Triton's dynamic allocation + any static).
* warps, stages: num_warps, num_stages of the launch configuration.
* CTAs/SM, warps/SM: theoretical occupancy from registers (allocated per warp in units of
  256), shared memory (+1 KiB reserved per CTA, 128-byte granules), warps and CTAs per SM
  (and tensor-memory columns on sm_100) with the target's limits; kernels.json says which
  limit binds.
* MMA: `wgmma` if the PTX has wgmma.mma_async, `mma.sync` if it has mma.sync, else `FMA`
  (no tensor cores); `tcgen05` for sm_100's tensor-memory MMA.
* ld.global: static count of `ld.global*` instructions in the PTX per access width in bits
  (128 = 16-byte vector loads); cp.async: static count of cp.async copies per size in bytes
  (and TMA `cp.async.bulk` if any). Static counts, not executed instructions.
* grid(s): the launch grids seen in the step.

ESTIMATE (kernels.md's last section, `estimate` in kernels.json): a roofline model of the
SimpleNet conv launches from the host wrappers' LaunchPlans (useful and issued FLOPs,
useful and tiled GEMM rows, compulsory bytes) and each binary's occupancy, against the
datasheet peaks of the arch's GPU; its assumptions are written next to `PEAKS` below and in
the report. Per launch: MMA-row utilisation, MAC utilisation, waves, SM fill, the bound, the
time; per dtype: forward, backward and total against the floor of the useful FLOPs at peak.
Kernels outside the model (not on wgmma, or with more than a handful of scalar 16-bit
loads) are listed, not hidden. An estimate, never a measurement.

Code: bench/gpu_target/ (targets, stand-in driver, tracing, PTX analysis, estimate, rendering);
this file is the command line.

Exit status: 0 when every kernel compiled; 1 when any kernel failed to compile or load (each
failure is printed with the kernel and the reason; the compiler's full output goes to
DIR/compile_errors.log); 2 for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

from gpu_target.cli import command, REPO, Parser, UsageError, positive_int, run_main, use_checkout
from gpu_target.driver import require_triton, stand_in
from gpu_target.estimate import build_estimate
from gpu_target.ptx import build_rows
from gpu_target.render import CAVEAT, render_markdown
from gpu_target.targets import ARCHS
from gpu_target.tracing import Tracker, fp32_mode, patched, run_ops, run_step, simplenet_layers

FLAGS = ("--arch", "--preset", "--batch", "--dtypes", "--out", "--image-size", "--step")
# fp32 follows torch's default TF32 setting for convolutions (torch.backends.cudnn.allow_tf32
# = True: TF32 tensor cores); fp32-exact compiles the IEEE fp32 kernels (allow_tf32 = False).
DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp32-exact")
STEPS = ("model", "ops")


def parse_args(argv):
    parser = Parser(description=__doc__.split("\n")[0], add_help=True, flags=FLAGS)
    for flag in ("--arch", "--preset", "--batch", "--dtypes", "--out", "--image-size"):
        parser.add_argument(flag)
    parser.add_argument("--step", default="model")
    args = parser.parse_args(argv)
    if args.step not in STEPS:
        raise UsageError(f"--step {args.step}: expected one of {', '.join(STEPS)}")
    for flag in ("arch", "preset", "batch", "dtypes", "out"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag}: expected a value (required)")
    if args.arch not in ARCHS:
        raise UsageError(f"--arch {args.arch}: expected one of {', '.join(ARCHS)}")
    use_checkout()
    from lnlatten_fast.config import PRESETS  # the one preset table

    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset}: expected {' or '.join(PRESETS)}")
    args.batch = positive_int("--batch", args.batch)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    if not dtypes or any(d not in DTYPE_NAMES for d in dtypes) or len(set(dtypes)) != len(dtypes):
        raise UsageError(f"--dtypes {args.dtypes}: expected a comma list of distinct bf16, fp16, fp32, fp32-exact")
    args.dtypes = dtypes
    if args.image_size is not None:
        try:
            size = int(args.image_size)
        except ValueError:
            size = 0
        if size <= 0 or size % 16:
            raise UsageError(f"--image-size {args.image_size}: expected a positive multiple of 16")
        args.image_size = size
    args.out = Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: expected a directory (it is a file)")
    return args


def run_report(args) -> int:
    start = time.perf_counter()
    spec = ARCHS[args.arch]
    require_triton(args.arch)
    import triton
    from triton import knobs

    tracker = Tracker(args.out)
    sys.path.insert(0, str(REPO))  # the checkout's package, not an installed copy
    import torch

    import lnlatten_fast as lf

    base = lf.LNLConfig.preset(args.preset)
    try:
        cfg = base.replace(backend="triton", **({"image_size": args.image_size} if args.image_size else {}))
    except (ValueError, TypeError) as error:
        raise UsageError(f"--image-size {args.image_size}: expected a size the model accepts ({error})")
    layers = simplenet_layers(cfg)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile_errors.log").unlink(missing_ok=True)
    with patched(spec.sms, tracker.record_plan) as patches, stand_in(spec, tracker):
        step = run_step if args.step == "model" else run_ops
        for dtype_name in args.dtypes:
            try:
                with fp32_mode(dtype_name):
                    step(cfg, args.batch, dtype_name, tracker, layers)
            except Exception as error:  # noqa: BLE001 - reported, then the exit status says so
                # Failures inside an op were caught by the interceptor: this is the model itself.
                tracker.op = None
                tracker.fail("(training step)", f"{type(error).__name__}: {error}", traceback.format_exc())

    rows = build_rows(tracker, spec)
    ptxas = "ptxas-blackwell" if spec.capability >= 90 else "ptxas"
    tool = getattr(knobs.nvidia, ptxas.replace("-", "_"))
    geom = cfg.geometry
    report = {
        "caveat": CAVEAT,
        "arch": f"sm_{spec.capability}{'a' if spec.capability >= 90 else ''}",
        "requested_arch": args.arch,
        "capability": spec.capability,
        "limits": dataclasses.asdict(spec),
        "preset": args.preset,
        "step": args.step,
        "batch": args.batch,
        "dtypes": args.dtypes,
        "config": {"image_size": cfg.image_size, "num_patches": geom.num_patches, "patch": geom.patch,
                   "stride": geom.stride, "simplenet_widths": list(cfg.simplenet_widths),
                   "unet_widths": list(cfg.unet_widths), "attention_dim": cfg.attention_dim},
        "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "ptxas": f"{ptxas} {tool.version}",
        "lnlatten_fast": str(Path(lf.__file__).parent),
        "cache_dir": knobs.cache.dir,
        "patches": patches,
        "launch_count": len(tracker.launches),
        "kernels": rows,
        "failures": tracker.failures,
        "launches": tracker.launches,
        "calls": tracker.calls,
    }
    report["estimate"] = build_estimate(report, spec)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "kernels.json").write_text(json.dumps(report, indent=1))
    markdown = render_markdown(report)
    (args.out / "kernels.md").write_text(markdown)

    tracker.print_failures()
    print(markdown)
    print(f"{len(rows)} binaries, {len(tracker.launches)} launches, {len(tracker.failures)} failures, "
          f"{report['wall_seconds']} s; wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 1 if tracker.failures else 0


main = command(parse_args, run_report)


if __name__ == "__main__":
    run_main(main)
