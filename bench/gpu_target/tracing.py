"""Tracing one training step (or each op alone) on meta tensors, so that every Triton kernel it
launches goes through Triton's JIT for the target behind the stand-in driver (driver.py).

* Meta tensors: the model is built on the meta device, cast to the dtype (`model.to(bf16)`
  gives the ops the bf16 operands they get in bf16 training) and put in channels-last, with a
  channels-last input, as the trainer does. No memory, no data. Pointer alignment: Triton
  specialises a pointer on `data_ptr() % 16`; a meta tensor's data_ptr() is storage_offset *
  element_size from a base of 0, i.e. exactly what a CUDA tensor has relative to its
  (256-byte aligned) allocation, so divisibility by 16 comes out as on the GPU.
* Dispatch interception (`make_interceptor`, a TorchDispatchMode): on meta tensors the
  `lnlatten_fast::triton_*` custom ops would run their fake implementations, which launch
  nothing. The mode catches them and calls the function each CustomOpDef wraps (the real host
  wrapper) on the meta tensors instead, so the wrapper computes its real block sizes, grids and
  specialisations and launches through the stand-in driver. Autograd still runs the ops'
  registered backward, whose pieces are custom ops too: the mode catches those as well.
* `patched`: the few library internals the meta step needs changed (listed in each report).
* `Tracker`: what ran (ops, layers, launches, each launch's LaunchPlan, compiles, failures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import traceback
from pathlib import Path


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


def describe(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "stride": list(value.stride()),
                "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    return value


class Tracker:
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

    def print_failures(self) -> None:
        """One `error:` line per failure on stderr: kernel, where (op, layer, dtype), first line
        of the reason."""
        import sys

        for failure in self.failures:
            where = [failure["op"], None if failure["layer"] is None else f"layer {failure['layer']}", failure["dtype"]]
            where = ", ".join(str(x) for x in where if x)
            print(f"error: {failure['kernel']} ({where}) failed: {(failure['reason'].splitlines() or [''])[0]}",
                  file=sys.stderr)


# ---- the interception -------------------------------------------------------------------------
def _channels_last_by_cudnn(inp, weight) -> bool:
    """cuDNN's layout choice (cudnn_conv_suggest_memory_format): channels-last output for a 4-D
    weight when the input or the weight suggests channels-last."""
    import torch
    from torch._prims_common import suggest_memory_format

    return weight.dim() == 4 and torch.channels_last in (suggest_memory_format(inp), suggest_memory_format(weight))


def is_triton_op(func) -> bool:
    """Whether an OpOverload is one of lnlatten_fast's Triton custom ops."""
    namespace, _, opname = func._schema.name.partition("::")
    return namespace == "lnlatten_fast" and opname.startswith("triton_")


def cudnn_layout(func, args, out):
    """aten.convolution's output as cuDNN lays it out: torch's meta kernel always returns a
    contiguous output, cuDNN channels-last when the input or the weight is (F9 and Q, K, V come
    out of such convs, and their strides are kernel specialisations)."""
    import torch

    if func is torch.ops.aten.convolution.default and out.device.type == "meta" and _channels_last_by_cudnn(args[0], args[1]):
        return torch.empty_like(out, memory_format=torch.channels_last)
    return out


def run_host_wrapper(tracker: Tracker, func, args, kwargs, layers: dict):
    """Call the real host wrapper of a `lnlatten_fast::triton_*` op on meta tensors (it launches
    through the stand-in driver), recording the call in `tracker`. A failure is recorded as a
    compile/load failure, and the op's fake outputs stand in so the rest of the step goes on."""
    from torch._library.custom_ops import OPDEFS

    qualname = func._schema.name
    opname = qualname.partition("::")[2]
    opdef = OPDEFS.get(qualname)
    if opdef is None or not hasattr(opdef, "_init_fn"):
        raise RuntimeError(f"{qualname}: cannot find the function its CustomOpDef wraps (torch changed?)")
    label = " ".join(OP_LABELS.get(opname, (opname, ""))).strip()
    layer = layer_of(opname, args, layers)
    tracker.op = (label, layer)
    tracker.current_kernel = None
    tracker.calls.append({"dtype": tracker.dtype, "qualname": qualname, "op": label, "layer": layer,
                          "args": describe(list(args))})
    try:
        # Triton prints ptxas logs (and, on failure, the whole PTX) to stdout.
        with contextlib.redirect_stdout(tracker.compiler_output):
            return opdef._init_fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here is a compile/load failure to report
        start = tracker._mark
        log = tracker.compiler_output.getvalue()[start:] + "\n" + traceback.format_exc()
        reason = f"{type(error).__name__}: {error}"
        tracker.fail(tracker.current_kernel or "(before any kernel)", reason, log)
        return func(*args, **kwargs)
    finally:
        tracker.op = None


def make_interceptor(tracker: Tracker, layers: dict):
    """The compile report's dispatch mode: cuDNN's conv layout, and the Triton ops' host wrappers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _StepInterceptor(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if is_triton_op(func):
                return run_host_wrapper(tracker, func, args, kwargs, layers)
            return cudnn_layout(func, args, func(*args, **kwargs))

    return _StepInterceptor()


@contextlib.contextmanager
def patched(target_sms: int, plan_listener):
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


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp32-exact": "float32"}


@contextlib.contextmanager
def fp32_mode(dtype_name: str):
    """torch.backends.cudnn.allow_tf32 as the dtype name asks (the conv kernels follow it)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = dtype_name != "fp32-exact"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def run_step(cfg, batch: int, dtype_name: str, tracker: Tracker, layers: dict) -> None:
    """One training step (forward, lnl_loss, backward) on meta tensors, triton backend."""
    import torch

    import lnlatten_fast as lf

    dtype = getattr(torch, DTYPES[dtype_name])
    tracker.dtype = dtype_name
    with torch.device("meta"):
        model = lf.LNLAttenNet(cfg)
    model = model.to(dtype).channels_last().train()
    size = cfg.image_size
    x = torch.empty(batch, cfg.in_channels, size, size, device="meta", dtype=dtype, memory_format=torch.channels_last)
    target = torch.zeros(batch, dtype=torch.long, device="meta")
    with make_interceptor(tracker, layers):
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


def run_ops(cfg, batch: int, dtype_name: str, tracker: Tracker, layers: dict) -> None:
    """Every op registered for the triton backend, alone: forward and backward on meta tensors.
    An op the registry lists without a case here is a failure (a new op must be compiled too)."""
    import torch

    from lnlatten_fast.ops import registry

    dtype = getattr(torch, DTYPES[dtype_name])
    tracker.dtype = dtype_name
    cases = op_cases(cfg, batch, dtype)
    for op, backend in registry.implementations():
        if backend != "triton":
            continue
        if op not in cases:
            tracker.fail(f"({op})", "no compile case for this op in bench/compile_report.py op_cases()")
            continue
        for _label, call in cases[op]:
            with make_interceptor(tracker, {}):
                out = call()
                outputs = out if isinstance(out, tuple) else (out,)
                torch.autograd.backward([o.float().sum() for o in outputs])
