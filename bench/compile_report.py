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

Exit status: 0 when every kernel compiled; 1 when any kernel failed to compile or load (each
failure is printed with the kernel and the reason; the compiler's full output goes to
DIR/compile_errors.log); 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAVEAT = "compiled, not run: no GPU executed these kernels"


# ---- targets --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArchSpec:
    capability: int
    gpu: str  # the GPU whose SM count and limits are used
    sms: int
    smem_per_sm: int  # bytes
    smem_per_cta: int  # bytes, opt-in maximum (what Triton checks a kernel against)
    max_warps_per_sm: int
    max_ctas_per_sm: int
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of this many
    smem_reserved_per_cta: int = 1024
    smem_granule: int = 128


_KIB = 1024
_HOPPER = ArchSpec(90, "H100/H200-class", 132, 228 * _KIB, 227 * _KIB, 64, 32)
_BLACKWELL = ArchSpec(100, "B200-class", 148, 228 * _KIB, 227 * _KIB, 64, 32)
ARCHS = {
    "sm_80": ArchSpec(80, "A100-class", 108, 164 * _KIB, 163 * _KIB, 64, 32),
    "sm_86": ArchSpec(86, "A40-class", 84, 100 * _KIB, 99 * _KIB, 48, 16),
    "sm_89": ArchSpec(89, "L40S-class", 142, 100 * _KIB, 99 * _KIB, 48, 24),
    "sm_90": _HOPPER,
    "sm_90a": _HOPPER,
    "sm_100": _BLACKWELL,
    "sm_100a": _BLACKWELL,
}
# fp32 follows torch's default TF32 setting for convolutions (torch.backends.cudnn.allow_tf32
# = True: TF32 tensor cores); fp32-exact compiles the IEEE fp32 kernels (allow_tf32 = False).
DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp32-exact")
STEPS = ("model", "ops")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # One line "error: --flag ...: expected ..." and exit 2, instead of argparse's usage dump.
    def error(self, message):
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            raise _UsageError(f"{match.group(1)}: expected only --arch, --preset, --batch, --dtypes, --out, --image-size, --step")
        match = re.match(r"argument (\S+): (.*)", message)
        if match:
            raise _UsageError(f"{match.group(1).split('/')[0]}: expected a value ({match.group(2)})")
        raise _UsageError(message)


def parse_args(argv):
    parser = _Parser(description=__doc__.split("\n")[0], add_help=True)
    for flag in ("--arch", "--preset", "--batch", "--dtypes", "--out", "--image-size"):
        parser.add_argument(flag)
    parser.add_argument("--step", default="model")
    args = parser.parse_args(argv)
    if args.step not in STEPS:
        raise _UsageError(f"--step {args.step}: expected one of {', '.join(STEPS)}")
    for flag in ("arch", "preset", "batch", "dtypes", "out"):
        if getattr(args, flag) is None:
            raise _UsageError(f"--{flag}: expected a value (required)")
    if args.arch not in ARCHS:
        raise _UsageError(f"--arch {args.arch}: expected one of {', '.join(ARCHS)}")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the checkout's package, not an installed copy
    from lnlatten_fast.config import PRESETS  # the one preset table

    if args.preset not in PRESETS:
        raise _UsageError(f"--preset {args.preset}: expected {' or '.join(PRESETS)}")
    try:
        batch = int(args.batch)
    except ValueError:
        batch = 0
    if batch <= 0 or str(batch) != args.batch.strip():
        raise _UsageError(f"--batch {args.batch}: expected a positive integer")
    args.batch = batch
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    if not dtypes or any(d not in DTYPE_NAMES for d in dtypes) or len(set(dtypes)) != len(dtypes):
        raise _UsageError(f"--dtypes {args.dtypes}: expected a comma list of distinct bf16, fp16, fp32, fp32-exact")
    args.dtypes = dtypes
    if args.image_size is not None:
        try:
            size = int(args.image_size)
        except ValueError:
            size = 0
        if size <= 0 or size % 16:
            raise _UsageError(f"--image-size {args.image_size}: expected a positive multiple of 16")
        args.image_size = size
    args.out = Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise _UsageError(f"--out {args.out}: expected a directory (it is a file)")
    return args


# ---- stand-in Triton driver -------------------------------------------------------------------
def _run_tool(argv) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def cubin_resources(cubin_path) -> dict:
    """REG/SHARED/LOCAL/STACK of the cubin's entry function, from cuobjdump --dump-resource-usage."""
    from triton import knobs

    text = _run_tool([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin_path)])
    fields = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        match = re.search(rf"\b{key}:(\d+)", text)
        if match is None:
            raise RuntimeError(f"cuobjdump printed no {key} for {cubin_path}:\n{text}")
        fields[key.lower()] = int(match.group(1))
    return fields


def max_threads_per_cta(regs: int, spec: ArchSpec) -> int:
    """What the driver reports as CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK for this register count."""
    per_warp = max(1, math.ceil(regs * 32 / spec.reg_unit)) * spec.reg_unit
    return min(1024, (spec.regs_per_sm // per_warp) * 32)


class _StandInUtils:
    def __init__(self, spec: ArchSpec):
        self.spec = spec
        self._handles = 0

    def load_binary(self, name, kernel, shared, device):
        # No driver: nothing is loaded. The register count comes from the cubin itself, so
        # Triton's threads-vs-registers check (CompiledKernel._init_handles) is the device's.
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(kernel)
            fh.flush()
            res = cubin_resources(fh.name)
        self._handles += 1
        return self._handles, self._handles, res["reg"], res["local"] // 4, max_threads_per_cta(res["reg"], self.spec)

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return {
            "max_shared_mem": self.spec.smem_per_cta,
            "max_num_regs": self.spec.regs_per_sm,
            "multiprocessor_count": self.spec.sms,
            "warpSize": 32,
            "sm_clock_rate": 0,
            "mem_clock_rate": 0,
            "mem_bus_width": 0,
        }


class _RecordingLauncher:
    """Takes the place of CudaLauncher: launches nothing, records the launch."""

    tracker = None  # set by run_report

    def __init__(self, src, metadata):
        self.name = metadata.name
        self.hash = metadata.hash
        self.global_scratch_size = metadata.global_scratch_size
        self.tracker.current_kernel = self.name

    def __call__(self, grid_x, grid_y, grid_z, stream, function, kernel_metadata, launch_metadata,
                 enter_hook, exit_hook, *args):
        self.tracker.record_launch(self, (grid_x, grid_y, grid_z))


def _make_driver(spec: ArchSpec):
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class _StandInDriver(DriverBase):
        def __init__(self):
            self.spec = spec
            self.utils = _StandInUtils(spec)
            self.launcher_cls = _RecordingLauncher

        @classmethod
        def is_active(cls):
            return False  # never picked automatically; installed with set_active

        def map_python_to_cpp_type(self, ty):
            from triton.backends.nvidia.driver import ty_to_cpp

            return ty_to_cpp(ty)

        def get_current_target(self):
            return GPUTarget("cuda", spec.capability, 32)

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=None):
            return divmod(spec.capability, 10)

        def get_active_torch_device(self):
            import torch

            return torch.device("meta")

        def get_benchmarker(self):
            raise RuntimeError("the compile report runs nothing: no benchmarker")

    return _StandInDriver()


# ---- what ran: ops, layers, launches, compiles -----------------------------------------------
OP_LABELS = {
    "triton_patch_conv3x3": ("patch_conv3x3", "fwd"),
    "triton_patch_conv3x3_grad_input": ("patch_conv3x3", "grad_input"),
    "triton_patch_conv3x3_grad_weight": ("patch_conv3x3", "grad_weight"),
    "triton_grouped_conv3x3": ("grouped_conv3x3", "fwd"),
    "triton_grouped_conv3x3_grad_input": ("grouped_conv3x3", "grad_input"),
    "triton_grouped_conv3x3_grad_weight": ("grouped_conv3x3", "grad_weight"),
    "triton_l1_attention": ("l1_nonlocal_attention", "fwd"),
    "triton_l1_attention_backward": ("l1_nonlocal_attention", "bwd"),
    "triton_extract_patches": ("extract_patches", "fwd"),
    "triton_overlap_add": ("overlap_add", "fwd"),
}


def simplenet_layers(cfg) -> dict:
    """(c_in, c_out, input height, pool) -> SimpleNet layer number (1..6) for this config."""
    w0, w1, w2 = cfg.simplenet_widths
    channels = [cfg.unet_widths[0], w0, w0, w1, w1, w2, w2]
    patch = cfg.geometry.patch
    table = {}
    height = patch
    for layer in range(1, 7):
        pool = layer % 2 == 0
        table[(channels[layer - 1], channels[layer], height, pool)] = layer
        if pool:
            height //= 2
    return table


def layer_of(opname: str, args, layers: dict):
    if not layers:  # ops alone (--step ops): no model layer to name
        return None
    if opname.startswith("triton_patch_conv3x3"):
        return 1
    if opname == "triton_grouped_conv3x3":
        h, weight, _bias, _relu, pool = args
        key = (weight.shape[2], weight.shape[1], h.shape[-2], pool)
    elif opname == "triton_grouped_conv3x3_grad_input":
        _grad, _aux, weight, height, _width, _relu, pool = args
        key = (weight.shape[2], weight.shape[1], height, pool)
    elif opname == "triton_grouped_conv3x3_grad_weight":
        grad, _aux, h, _relu, pool, _need_bias = args
        key = (h.shape[2], grad.shape[2], h.shape[-2], pool)
    else:
        return None
    return layers.get(tuple(int(k) if not isinstance(k, bool) else k for k in key), "?")


def _describe(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "stride": list(value.stride()),
                "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


class _Tracker:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.dtype = None
        self.op = None  # (op label, layer) of the custom op being run
        self.current_kernel = None
        self.compiler_output = io.StringIO()  # what Triton/ptxas print while compiling
        self._mark = 0
        self.compiled = {}  # binary hash -> compile record
        self.launches = []
        self.calls = []
        self.failures = []
        self.pending_plan = None  # the LaunchPlan a host wrapper noted just before launching

    # lnlatten_fast.ops.triton._common.launch_listener: the wrapper's plan of its next launch
    def record_plan(self, plan):
        self.pending_plan = dataclasses.asdict(plan)

    # knobs.runtime.jit_cache_hook: called before each JIT compile (in-memory cache miss)
    def before_compile(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        self.current_kernel = fn.name
        self._mark = len(self.compiler_output.getvalue())
        return False  # False: go on and compile

    # knobs.compilation.listener: called after each compile, disk-cache hit or not
    def after_compile(self, *, src, metadata, metadata_group, times, cache_hit):
        log = "" if cache_hit else self.compiler_output.getvalue()[self._mark:]
        self.compiled[metadata["hash"]] = {
            "name": metadata["name"],
            "files": dict(metadata_group),
            "cache_hit": cache_hit,
            "compile_seconds": None if cache_hit else round(times.total / 1e6, 2),
            "ptxas_log": log,
            "constants": {str(k): str(v) for k, v in getattr(src, "constants", {}).items()},
            "signature": {str(k): str(v) for k, v in getattr(src, "signature", {}).items()},
        }

    def record_launch(self, launcher, grid):
        op, layer = self.op or ("(outside any op)", None)
        entry = {"hash": launcher.hash, "name": launcher.name, "grid": list(grid), "op": op, "layer": layer,
                 "dtype": self.dtype, "index": len(self.launches)}
        if launcher.global_scratch_size:
            entry["global_scratch_bytes"] = launcher.global_scratch_size
        if self.pending_plan is not None:
            entry["plan"], self.pending_plan = self.pending_plan, None
        # The CUDA launch limits: a grid past them compiles fine and fails at launch.
        if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            self.fail(launcher.name, f"grid {grid} exceeds CUDA's launch limits (x < 2^31, y, z <= 65535)")
        self.launches.append(entry)

    def fail(self, kernel, reason, log=""):
        op, layer = self.op or (None, None)
        self.failures.append({"kernel": kernel, "op": op, "layer": layer, "dtype": self.dtype, "reason": reason})
        if log:
            with open(self.out_dir / "compile_errors.log", "a") as fh:
                fh.write(f"==== {kernel} ({op}, layer {layer}, {self.dtype})\n{reason}\n{log}\n")


# ---- the interception -------------------------------------------------------------------------
def _channels_last_by_cudnn(inp, weight) -> bool:
    """cuDNN's layout choice (cudnn_conv_suggest_memory_format): channels-last output for a 4-D
    weight when the input or the weight suggests channels-last."""
    import torch
    from torch._prims_common import suggest_memory_format

    return weight.dim() == 4 and torch.channels_last in (suggest_memory_format(inp), suggest_memory_format(weight))


def _make_interceptor(tracker: _Tracker, layers: dict):
    import torch
    from torch._library.custom_ops import OPDEFS
    from torch.utils._python_dispatch import TorchDispatchMode

    aten_conv = torch.ops.aten.convolution.default

    class _StepInterceptor(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            qualname = func._schema.name
            namespace, _, opname = qualname.partition("::")
            if func is aten_conv:
                out = func(*args, **kwargs)
                if out.device.type == "meta" and _channels_last_by_cudnn(args[0], args[1]):
                    out = torch.empty_like(out, memory_format=torch.channels_last)
                return out
            if namespace != "lnlatten_fast" or not opname.startswith("triton_"):
                return func(*args, **kwargs)
            opdef = OPDEFS.get(qualname)
            if opdef is None or not hasattr(opdef, "_init_fn"):
                raise RuntimeError(f"{qualname}: cannot find the function its CustomOpDef wraps (torch changed?)")
            label = " ".join(OP_LABELS.get(opname, (opname, ""))).strip()
            layer = layer_of(opname, args, layers)
            tracker.op = (label, layer)
            tracker.current_kernel = None
            tracker.calls.append({"dtype": tracker.dtype, "qualname": qualname, "op": label, "layer": layer,
                                  "args": _describe(list(args))})
            try:
                # The real host wrapper on meta tensors: it launches through the stand-in
                # driver. Triton prints ptxas logs (and, on failure, the whole PTX) to stdout.
                with contextlib.redirect_stdout(tracker.compiler_output):
                    return opdef._init_fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any failure here is a compile/load failure to report
                start = tracker._mark
                log = tracker.compiler_output.getvalue()[start:] + "\n" + traceback.format_exc()
                reason = f"{type(error).__name__}: {error}"
                tracker.fail(tracker.current_kernel or "(before any kernel)", reason, log)
                # Carry on with the fake's outputs so the rest of the step compiles too.
                return func(*args, **kwargs)
            finally:
                tracker.op = None

    return _StepInterceptor()


@contextlib.contextmanager
def _patched(target_sms: int, plan_listener):
    """The report's patches of library internals (see the module docstring), undone on exit."""
    from lnlatten_fast.ops import dispatch
    from lnlatten_fast.ops.triton import _common

    key = ("triton", "meta")
    saved_availability = dispatch._AVAILABILITY.get(key)
    saved_sm_count = _common.multiprocessor_count
    saved_listener = _common.launch_listener
    # Backend resolution knows cpu and cuda only; the meta step is the triton backend's.
    dispatch._AVAILABILITY[key] = (True, "compile report: meta tensors, stand-in driver")
    # The launch sizing the target GPU gets (off CUDA the library counts one SM).
    _common.multiprocessor_count = lambda device: target_sms
    _common.launch_listener = plan_listener  # each wrapper's LaunchPlan, for the estimate
    try:
        yield [
            "lnlatten_fast.ops.dispatch._AVAILABILITY[('triton', 'meta')] = usable (backend resolution knows cpu/cuda only)",
            f"lnlatten_fast.ops.triton._common.multiprocessor_count -> {target_sms} "
            "(the target's SMs, which size the grad-weight batch split; off CUDA the library counts 1)",
            "lnlatten_fast.ops.triton._common.launch_listener -> the report (each launch's plan, for the estimate)",
            "aten.convolution on meta -> channels-last output when input or weight is channels-last "
            "(cuDNN's choice; torch's meta kernel always returns contiguous)",
        ]
    finally:
        _common.launch_listener = saved_listener
        _common.multiprocessor_count = saved_sm_count
        if saved_availability is None:
            dispatch._AVAILABILITY.pop(key, None)
        else:
            dispatch._AVAILABILITY[key] = saved_availability


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp32-exact": "float32"}


@contextlib.contextmanager
def _fp32_mode(dtype_name: str):
    """torch.backends.cudnn.allow_tf32 as the dtype name asks (the conv kernels follow it)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = dtype_name != "fp32-exact"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def run_step(cfg, batch: int, dtype_name: str, tracker: _Tracker, layers: dict) -> None:
    """One training step (forward, lnl_loss, backward) on meta tensors, triton backend."""
    import torch

    import lnlatten_fast as lf

    dtype = getattr(torch, _DTYPES[dtype_name])
    tracker.dtype = dtype_name
    with torch.device("meta"):
        model = lf.LNLAttenNet(cfg)
    model = model.to(dtype).channels_last().train()
    size = cfg.image_size
    x = torch.empty(batch, cfg.in_channels, size, size, device="meta", dtype=dtype, memory_format=torch.channels_last)
    target = torch.zeros(batch, dtype=torch.long, device="meta")
    with _make_interceptor(tracker, layers):
        logits = model(x).logits
        loss = lf.lnl_loss(logits.float(), target, model)  # as the trainer: fp32 loss
        loss.backward()


def op_cases(cfg, batch: int, dtype):
    """{op: [(label, call)]}: each op of the triton backend alone at the preset's shapes, as the
    model calls it (channels-last F9, widths of the first SimpleNet layers, attention_dim)."""
    import torch

    import lnlatten_fast as lf

    geom = cfg.geometry
    c0, c1 = cfg.unet_widths[0], cfg.simplenet_widths[0]

    def leaf(*shape, channels_last=False):
        t = torch.empty(*shape, device="meta", dtype=dtype)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(True)

    f9 = lambda: leaf(batch, c0, cfg.image_size, cfg.image_size, channels_last=True)  # noqa: E731
    windows = lambda: leaf(batch, geom.num_patches, c0, geom.patch, geom.patch)  # noqa: E731
    qkv = lambda: leaf(batch, geom.num_patches, cfg.attention_dim)  # noqa: E731
    weight = lambda c_out, c_in: (leaf(geom.num_patches, c_out, c_in, 3, 3), leaf(geom.num_patches, c_out))  # noqa: E731
    return {
        "extract_patches": [("", lambda: lf.ops.extract_patches(f9(), geom, backend="triton"))],
        "overlap_add": [("", lambda: lf.ops.overlap_add(windows(), geom, backend="triton"))],
        "patch_conv3x3": [("", lambda: lf.ops.patch_conv3x3(f9(), *weight(c1, c0), geom, backend="triton"))],
        "grouped_conv3x3": [
            (f"pool={pool}", lambda pool=pool: lf.ops.grouped_conv3x3(windows(), *weight(c1, c0), pool=pool, backend="triton"))
            for pool in (False, True)
        ],
        "l1_nonlocal_attention": [("", lambda: lf.ops.l1_nonlocal_attention(qkv(), qkv(), qkv(), backend="triton"))],
    }


def run_ops(cfg, batch: int, dtype_name: str, tracker: _Tracker, layers: dict) -> None:
    """Every op registered for the triton backend, alone: forward and backward on meta tensors.
    An op the registry lists without a case here is a failure (a new op must be compiled too)."""
    import torch

    from lnlatten_fast.ops import registry

    dtype = getattr(torch, _DTYPES[dtype_name])
    tracker.dtype = dtype_name
    cases = op_cases(cfg, batch, dtype)
    for op, backend in registry.implementations():
        if backend != "triton":
            continue
        if op not in cases:
            tracker.fail(f"({op})", "no compile case for this op in bench/compile_report.py op_cases()")
            continue
        for _label, call in cases[op]:
            with _make_interceptor(tracker, {}):
                out = call()
                outputs = out if isinstance(out, tuple) else (out,)
                torch.autograd.backward([o.float().sum() for o in outputs])


# ---- per-binary analysis ------------------------------------------------------------------------
def ptx_features(ptx: str) -> dict:
    if "tcgen05.mma" in ptx:  # Blackwell's tensor-memory MMA (sm_100)
        mma = "tcgen05"
    elif "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif "mma.sync" in ptx:
        mma = "mma.sync"
    else:
        mma = "FMA"
    mma_shapes = sorted(set(re.findall(r"\b((?:tcgen05\.mma|wgmma\.mma_async|mma\.sync)[\w.:]*)", ptx)))

    def widths(opcode_prefix):
        counts = defaultdict(int)
        for opcode in re.findall(rf"\b{opcode_prefix}[\w.:]*", ptx):
            parts = opcode.split(".")
            vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
            bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bsuf]\d+", p)), None)
            if bits is not None:
                counts[vec * bits] += 1
        return {str(k): counts[k] for k in sorted(counts)}

    cp_async = defaultdict(int)
    pattern = r"\bcp\.async\.c[ag]\.shared\.global[\w.:]*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)"
    for size in re.findall(pattern, ptx):  # ptxas-bound PTX writes the size in hex
        cp_async[int(size, 0)] += 1
    return {
        "mma": mma,
        "mma_instructions": mma_shapes,
        "global_loads": widths(r"ld\.global"),
        "global_stores": widths(r"st\.global"),
        "cp_async": {str(k): cp_async[k] for k in sorted(cp_async)},
        "tma_bulk": len(re.findall(r"\bcp\.async\.bulk\b", ptx)),
    }


def parse_ptxas_log(log: str, name: str) -> dict | None:
    block = log.split(f"Function properties for {name}")
    if len(block) < 2:
        return None
    body = block[1]
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body)
    regs = re.search(r"Used (\d+) registers", body)
    if not (spills and regs):
        return None
    return {"stack": int(spills.group(1)), "spill_stores": int(spills.group(2)),
            "spill_loads": int(spills.group(3)), "registers": int(regs.group(1))}


def rerun_ptxas(meta: dict, ptx: str) -> tuple[str, bytes]:
    """ptxas -v again through the backend's own make_cubin (same flags as the original build),
    for binaries that came from the disk cache (their log is gone)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.compiler import make_backend

    target = GPUTarget(**meta["target"])
    backend = make_backend(target)
    fields = {k: meta[k] for k in CUDAOptions.__dataclass_fields__ if k in meta}
    options = backend.parse_options(fields)
    out = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(out):
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints the ptxas -v log only when asked
        cubin = backend.make_cubin(ptx, {}, options, target.arch)
    return out.getvalue(), cubin


def occupancy(spec: ArchSpec, regs: int, smem: int, warps: int, tmem_columns: int = 0) -> dict:
    per_warp = max(1, math.ceil(regs * 32 / spec.reg_unit)) * spec.reg_unit
    per_cta_smem = math.ceil((smem + spec.smem_reserved_per_cta) / spec.smem_granule) * spec.smem_granule
    limits = {
        "registers": (spec.regs_per_sm // per_warp) // warps,
        "shared memory": spec.smem_per_sm // per_cta_smem,
        "warps": spec.max_warps_per_sm // warps,
        "CTAs": spec.max_ctas_per_sm,
    }
    if tmem_columns:  # sm_100: 512 columns of tensor memory per SM
        limits["tensor memory"] = 512 // tmem_columns
    ctas = min(limits.values())
    binding = [k for k, v in limits.items() if v == ctas]
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * warps, "limited_by": binding, "limits": limits}


def analyse(hash_, record: dict, spec: ArchSpec, tracker: _Tracker) -> dict:
    files = record["files"]
    by_ext = {Path(name).suffix.lstrip("."): path for name, path in files.items()}
    meta = json.loads(Path(by_ext["json"]).read_text())
    name = meta["name"]
    cubin_path, ptx = Path(by_ext["cubin"]), Path(by_ext["ptx"]).read_text()
    res = cubin_resources(cubin_path)
    log, identical = record["ptxas_log"], None
    if parse_ptxas_log(log, name) is None:  # from the disk cache: rebuild to get the log
        log, cubin = rerun_ptxas(meta, ptx)
        identical = cubin == cubin_path.read_bytes()
    ptxas = parse_ptxas_log(log, name)
    if identical is False and ptxas is not None:
        # Not the same build (ptxas options or version changed since it was cached): its
        # spill counts would describe another binary.
        print(f"warning: {name}: rebuilding the cached PTX gave a different cubin; spills unknown", file=sys.stderr)
        ptxas.update(spill_stores=None, spill_loads=None, stack=None, registers=res["reg"])
    if ptxas is None:
        tracker.fail(name, "no ptxas -v resource line for the entry function", log)
        ptxas = {"stack": None, "spill_stores": None, "spill_loads": None, "registers": None}
    elif ptxas["registers"] != res["reg"]:
        tracker.fail(name, f"ptxas -v says {ptxas['registers']} registers, the cached cubin {res['reg']}", log)
    shared = int(meta["shared"]) + res["shared"]
    warps = int(meta["num_warps"])
    spill = None if ptxas["spill_stores"] is None else ptxas["spill_stores"] + ptxas["spill_loads"]
    return {
        "name": name,
        "hash": hash_,
        "registers": res["reg"],
        "spill_stores": ptxas["spill_stores"],
        "spill_loads": ptxas["spill_loads"],
        "spill_bytes": spill,
        "stack_bytes": res["stack"],
        "local_bytes": res["local"],
        "shared_bytes": shared,
        "shared_dynamic": int(meta["shared"]),
        "shared_static": res["shared"],
        "num_warps": warps,
        "num_stages": int(meta["num_stages"]),
        "occupancy": occupancy(spec, res["reg"], shared, warps, int(meta.get("tmem_size") or 0)),
        **ptx_features(ptx),
        "cubin": str(cubin_path),
        "ptx": str(by_ext["ptx"]),
        "cache_hit": record["cache_hit"],
        "compile_seconds": record["compile_seconds"],
        "ptxas_rerun_identical": identical,
        "constants": record["constants"],
        "signature": record["signature"],
    }


def _layers_text(layers) -> str:
    known = sorted(x for x in layers if isinstance(x, int))
    other = sorted(str(x) for x in layers if not isinstance(x, int))
    items = [str(x) for x in known] + other
    if not items:
        return ""
    return (", SimpleNet layer " if len(items) == 1 else ", SimpleNet layers ") + ",".join(items)


def build_rows(tracker: _Tracker, spec: ArchSpec) -> list:
    uses = defaultdict(lambda: defaultdict(set))  # hash -> op label -> layers
    grids = defaultdict(list)
    dtypes = defaultdict(list)
    first = {}
    counts = defaultdict(int)
    for launch in tracker.launches:
        h = launch["hash"]
        first.setdefault(h, launch["index"])
        counts[h] += 1
        layers = uses[h][launch["op"]]
        if launch["layer"] is not None:
            layers.add(launch["layer"])
        if launch["grid"] not in grids[h]:
            grids[h].append(launch["grid"])
        if launch["dtype"] not in dtypes[h]:
            dtypes[h].append(launch["dtype"])
    rows = []
    for h in sorted(first, key=first.get):
        tracker.op, tracker.dtype = ("resource check", None), ",".join(dtypes[h])  # labels any failure below
        row = analyse(h, tracker.compiled[h], spec, tracker)
        row["used_by"] = "; ".join(op + _layers_text(layers) for op, layers in uses[h].items())
        row["uses"] = [{"op": op, "layers": sorted(map(str, layers))} for op, layers in uses[h].items()]
        row["dtype"] = ",".join(dtypes[h])
        row["grids"] = grids[h]
        row["launches"] = counts[h]
        rows.append(row)
    return rows


# ---- roofline estimate ------------------------------------------------------------------------
# AN ESTIMATE, not a measurement. Per conv launch (the host wrappers' LaunchPlans):
#   time = max(issued FLOPs / (peak(dtype, MMA) x efficiency(MMA)) / SM fill, bytes / HBM bandwidth)
# issued FLOPs include the tiles' padding (MMA-row and K utilisation); SM fill is the last
# wave's idle slots: programs / (ceil(waves) x slots), slots = SMs x CTAs/SM from the binary's
# occupancy. Efficiency is the fraction of dense peak a kernel of that MMA class reaches when
# every slot is busy (ASSUMED, to be checked by the first GPU run): wgmma 0.70 (Triton's
# cp.async-pipelined Hopper GEMMs), mma.sync 0.35 (no wgmma: about half of it on Hopper),
# FMA 0.50 of the CUDA-core fp32 peak. Bytes are compulsory traffic (each input read once,
# each output written once), so the memory term is a floor. Kernels with scalar 16-bit
# activation loads are outside this model (their loads, not the MMA, bind): flagged.
@dataclasses.dataclass(frozen=True)
class Peaks:
    gpu: str
    tensor_16bit: float  # dense bf16/fp16 FLOP/s
    tensor_tf32: float
    fma_fp32: float
    hbm: float  # bytes/s


PEAKS = {  # datasheet figures, dense (no sparsity)
    90: Peaks("H200 SXM", 989.4e12, 494.7e12, 66.9e12, 4.8e12),
    80: Peaks("A100 SXM", 312e12, 156e12, 19.5e12, 2.04e12),
    100: Peaks("B200", 2250e12, 1100e12, 80e12, 8.0e12),
}
EFFICIENCY = {"wgmma": 0.70, "tcgen05": 0.70, "mma.sync": 0.35, "FMA": 0.50}
SCALAR_16BIT_LOADS = 16  # "a handful": more static 16-bit ld.global than this flags a kernel


def _peak(peaks: Peaks, dtype_name: str, mma: str) -> float:
    if mma == "FMA":
        return peaks.fma_fp32
    return peaks.tensor_tf32 if dtype_name == "fp32" else peaks.tensor_16bit


def estimate_launch(plan: dict, row: dict, spec: ArchSpec, peaks: Peaks, dtype_name: str) -> dict:
    slots = spec.sms * max(1, row["occupancy"]["ctas_per_sm"])
    waves = plan["programs"] / slots
    fill = plan["programs"] / (math.ceil(waves) * slots)
    mma_seconds = plan["issued_flops"] / (_peak(peaks, dtype_name, row["mma"]) * EFFICIENCY[row["mma"]]) / fill
    memory_seconds = plan["bytes"] / peaks.hbm
    return {
        "waves": round(waves, 2),
        "sm_fill": round(fill, 3),
        "mma_row_utilisation": round(plan["rows"] / plan["row_slots"], 3),
        "mac_utilisation": round(plan["flops"] / plan["issued_flops"], 3),
        "seconds": max(mma_seconds, memory_seconds),
        "bound": "MMA" if mma_seconds >= memory_seconds else "memory",
    }


def build_estimate(report: dict, spec: ArchSpec) -> dict | None:
    """Per-kernel and per-step estimate of the SimpleNet convolutions (launches with a plan)."""
    peaks = PEAKS.get(spec.capability)
    if peaks is None:
        return None
    by_hash = {row["hash"]: row for row in report["kernels"]}
    steps = {}
    for launch in report["launches"]:
        plan = launch.get("plan")
        if plan is None:
            continue
        row = by_hash[launch["hash"]]
        est = estimate_launch(plan, row, spec, peaks, launch["dtype"])
        launch["estimate"] = est
        kernel = row.setdefault("estimate", {"seconds": 0.0, "flops": 0, "launches": []})
        kernel["seconds"] += est["seconds"]
        kernel["flops"] += plan["flops"]
        kernel["launches"].append({"layer": launch["layer"], "op": launch["op"], **est})
        scalar = row["global_loads"].get("16", 0) + row["global_loads"].get(16, 0)
        step = steps.setdefault(launch["dtype"], {"forward_seconds": 0.0, "backward_seconds": 0.0,
                                                  "forward_flops": 0, "backward_flops": 0, "flagged": set()})
        part = "forward" if plan["kernel"] == "forward" else "backward"
        step[f"{part}_seconds"] += est["seconds"]
        step[f"{part}_flops"] += plan["flops"]
        if scalar > SCALAR_16BIT_LOADS or row["mma"] != "wgmma":
            step["flagged"].add(row["name"] + f" ({row['mma']}, 16-bit ld.global x{scalar})")
    for dtype_name, step in steps.items():
        peak = peaks.tensor_tf32 if dtype_name == "fp32" else (peaks.fma_fp32 if dtype_name == "fp32-exact" else peaks.tensor_16bit)
        step["floor_seconds"] = (step["forward_flops"] + step["backward_flops"]) / peak
        step["forward_floor_seconds"] = step["forward_flops"] / peak
        step["total_seconds"] = step["forward_seconds"] + step["backward_seconds"]
        step["flagged"] = sorted(step["flagged"])
    return {"label": "ESTIMATE (roofline model, not measured)", "gpu": peaks.gpu,
            "peaks": dataclasses.asdict(peaks), "efficiency": EFFICIENCY, "steps": steps}


def render_estimate(report: dict) -> list:
    est = report.get("estimate")
    if not est:
        return []
    p = est["peaks"]
    lines = [
        "",
        f"## {est['label']}: SimpleNet convolutions on {est['gpu']}",
        "",
        f"Peaks (dense): 16-bit {p['tensor_16bit'] / 1e12:.0f} TFLOP/s, TF32 {p['tensor_tf32'] / 1e12:.0f}, "
        f"fp32 FMA {p['fma_fp32'] / 1e12:.1f}, HBM {p['hbm'] / 1e12:.1f} TB/s. Assumed efficiency at full SM fill: "
        + ", ".join(f"{k} {v:.2f}" for k, v in est["efficiency"].items())
        + ". time = max(issued FLOPs / (peak x efficiency) / SM fill, compulsory bytes / HBM). "
        "MMA rows: useful GEMM rows / rows in the launched tiles; MACs: useful / issued (K padding too); "
        "waves: programs / (SMs x CTAs/SM).",
        "",
        "| kernel | dtype | layer | MMA rows | MACs | waves | SM fill | bound | est. us |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["kernels"]:
        for launch in row.get("estimate", {}).get("launches", []):
            lines.append(
                f"| {row['name']} ({launch['op'].split()[-1]}) | {row['dtype']} | {launch['layer']} "
                f"| {launch['mma_row_utilisation']:.0%} | {launch['mac_utilisation']:.0%} | {launch['waves']:.2f} "
                f"| {launch['sm_fill']:.0%} | {launch['bound']} | {launch['seconds'] * 1e6:.0f} |")
    lines += ["", "| dtype | forward GFLOP | backward GFLOP | est. forward ms | est. backward ms | est. total ms "
              "| floor ms (useful FLOPs at peak) | est. / floor | outside the model |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for dtype_name, step in est["steps"].items():
        lines.append(
            f"| {dtype_name} | {step['forward_flops'] / 1e9:.0f} | {step['backward_flops'] / 1e9:.0f} "
            f"| {step['forward_seconds'] * 1e3:.2f} | {step['backward_seconds'] * 1e3:.2f} | {step['total_seconds'] * 1e3:.2f} "
            f"| {step['floor_seconds'] * 1e3:.2f} | {step['total_seconds'] / step['floor_seconds']:.2f} "
            f"| {'; '.join(step['flagged']) or '-'} |")
    return lines


# ---- output ----------------------------------------------------------------------------------------
def _fmt_counts(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items()) or "-"


def _fmt_grids(grids: list) -> str:
    text = ", ".join("(" + ",".join(map(str, g)) + ")" for g in grids[:3])
    return text + (f" +{len(grids) - 3} more" if len(grids) > 3 else "")


def render_markdown(report: dict) -> str:
    cfg = report["config"]
    spec = report["limits"]
    lines = [
        f"# Triton compile report: {report['arch']}, preset {report['preset']}, batch {report['batch']}",
        "",
        f"**{CAVEAT}.**",
        "",
        f"- arch: {report['arch']} (requested {report['requested_arch']}, capability {report['capability']}); "
        f"limits of a {spec['gpu']} GPU: {spec['sms']} SMs, {spec['regs_per_sm']} regs/SM in units of "
        f"{spec['reg_unit']} per warp, {spec['max_warps_per_sm']} warps/SM, {spec['max_ctas_per_sm']} CTAs/SM, "
        f"{spec['smem_per_sm'] // 1024} KiB shared/SM ({spec['smem_reserved_per_cta'] // 1024} KiB reserved per CTA), "
        f"{spec['smem_per_cta'] // 1024} KiB max per CTA",
        f"- preset: {report['preset']} (image {cfg['image_size']}, {cfg['num_patches']} windows of {cfg['patch']} px, "
        f"stride {cfg['stride']}, SimpleNet widths {','.join(map(str, cfg['simplenet_widths']))}), batch {report['batch']}, "
        f"dtypes {','.join(report['dtypes'])}",
        f"- triton {report['triton_version']} ({report['ptxas']}), torch {report['torch_version']}; "
        f"{len(report['kernels'])} binaries, {report['launch_count']} launches in "
        + ("one training step (forward + backward)" if report["step"] == "model" else "each triton op alone (forward + backward)"),
        "- step: model on meta tensors cast to the dtype, channels-last; custom ops' real host wrappers "
        "called through a dispatch mode; a stand-in driver records launches",
        "- patched: " + "; ".join(report["patches"]),
        f"- cubins in TRITON_CACHE_DIR={report['cache_dir']}",
        "- columns: regs/thread; spill B = spill stores + loads per thread; smem B per CTA; occupancy = "
        "CTAs and warps per SM (theoretical); ld.global = static count per width in bits; cp.async = static count per size in bytes",
    ]
    if report["failures"]:
        lines.append(f"- **FAILED: {len(report['failures'])} compile/load failure(s)**, see kernels.json and compile_errors.log")
    lines += [
        "",
        "| kernel | used by | dtype | regs | spill B (st+ld) | smem B | warps | stages | CTAs/SM | warps/SM "
        "| MMA | ld.global (bits:count) | cp.async (bytes:count) | grid(s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in report["kernels"]:
        spill = "?" if row["spill_bytes"] is None else f"{row['spill_bytes']} ({row['spill_stores']}+{row['spill_loads']})"
        occ = row["occupancy"]
        cp = _fmt_counts(row["cp_async"]) + (f" TMA:{row['tma_bulk']}" if row["tma_bulk"] else "")
        lines.append(
            f"| {row['name']} | {row['used_by']} | {row['dtype']} | {row['registers']} | {spill} | {row['shared_bytes']} "
            f"| {row['num_warps']} | {row['num_stages']} | {occ['ctas_per_sm']} | {occ['warps_per_sm']} | {row['mma']} "
            f"| {_fmt_counts(row['global_loads'])} | {cp} | {_fmt_grids(row['grids'])} |"
        )
    lines += render_estimate(report)
    return "\n".join(lines) + "\n"


def run_report(args) -> int:
    start = time.perf_counter()
    spec = ARCHS[args.arch]
    try:
        import triton
        from triton import knobs
    except ImportError as error:
        raise _UsageError(f"--arch {args.arch}: expected the triton package to compile with ({error})")

    if knobs.runtime.interpret:
        raise _UsageError("TRITON_INTERPRET=1: expected it unset (the interpreter compiles no GPU code)")
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as error:
        raise _UsageError(f"--arch {args.arch}: expected Triton's NVIDIA backend, which does not import ({error})")

    tracker = _Tracker(args.out)
    _RecordingLauncher.tracker = tracker
    sys.path.insert(0, str(REPO))  # the checkout's package, not an installed copy
    import torch

    import lnlatten_fast as lf

    base = lf.LNLConfig.preset(args.preset)
    try:
        cfg = base.replace(backend="triton", **({"image_size": args.image_size} if args.image_size else {}))
    except (ValueError, TypeError) as error:
        raise _UsageError(f"--image-size {args.image_size}: expected a size the model accepts ({error})")
    layers = simplenet_layers(cfg)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compile_errors.log").unlink(missing_ok=True)
    with _patched(spec.sms, tracker.record_plan) as patches, knobs.runtime.scope(), knobs.compilation.scope(), knobs.nvidia.scope():
        # Before anything can launch: every JIT function builds its binder from the active driver.
        triton.runtime.driver.set_active(_make_driver(spec))
        knobs.runtime.jit_cache_hook = tracker.before_compile
        knobs.compilation.listener = tracker.after_compile
        knobs.nvidia.dump_ptxas_log = True  # the ptxas -v log of each fresh build (not a cache-key input)
        # The stand-in stays active to the end: compiled kernels call its unload_module when
        # they are freed, and reset_active() would look for a real CUDA driver.
        step = run_step if args.step == "model" else run_ops
        for dtype_name in args.dtypes:
            try:
                with _fp32_mode(dtype_name):
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

    for failure in tracker.failures:
        where = [failure["op"], None if failure["layer"] is None else f"layer {failure['layer']}", failure["dtype"]]
        where = ", ".join(str(x) for x in where if x)
        print(f"error: {failure['kernel']} ({where}) failed: {(failure['reason'].splitlines() or [''])[0]}",
              file=sys.stderr)
    print(markdown)
    print(f"{len(rows)} binaries, {len(tracker.launches)} launches, {len(tracker.failures)} failures, "
          f"{report['wall_seconds']} s; wrote {args.out / 'kernels.json'} and {args.out / 'kernels.md'}")
    return 1 if tracker.failures else 0


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return run_report(args)
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: after failed compiles it once segfaulted there (exit 139, a
    # teardown-order crash in compiler objects the failures left behind), which would hide
    # the status. Everything is written and flushed by now.
    os._exit(status)
