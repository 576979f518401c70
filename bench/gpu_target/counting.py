"""Counting what a step does on the GPU from a trace on meta tensors: one record per kernel
launch group, with launches, FLOPs, bytes read and written, and whether the host waits.

`StepCounter` is a TorchDispatchMode: it sees every aten op below autograd (forward, the
backward autograd runs, the optimizer's foreach/fused ops) with the real shapes, strides and
dtypes, and writes records by these rules (step.md repeats them):

* launches: one CUDA launch per aten op that computes on the device; none for views, metadata
  and allocation (`empty*`, `detach`, `_unsafe_view`, ...), for ops whose outputs are all empty,
  or for host ops (every tensor on the CPU). The eager CUDA path's known extras: a convolution
  with a bias is cuDNN's kernel plus a separate bias-add launch; convolution_backward launches
  one kernel per gradient it computes, the bias gradient a separate reduction;
  max_pool2d_with_indices_backward and nll_loss_backward zero-fill their gradient first (one
  launch) and then scatter (one); `cat` copies up to 128 inputs per launch; foreach ops and
  the fused Adam/AdamW launch as torch's multi_tensor_apply chunks them (`foreach_launches`);
  a copy between host and device is one launch (a memcpy on the stream).
* bytes: each device tensor an op reads, plus each it writes, counted once per op as its
  footprint (elements at distinct addresses x element size: a broadcast stride-0 dim counts
  once); an in-place op reads and writes its self; copy_/fill_/zero_/random fills only write.
  Host-device copies are counted apart (`transfer` bytes, over PCIe).
* FLOPs: torch.utils.flop_counter's formulas (mm, addmm, bmm, baddbmm, convolution and its
  backward, attention); the Triton ops' from their host wrappers' LaunchPlans.
* host syncs: `_local_scalar_dense` (item(), bool(), float(), is_nonzero()), `nonzero`,
  `equal`, `bincount`, `masked_select`, `unique`, indexing with a boolean mask, a copy from the
  device to the host, and a host-to-device copy from pageable (unpinned) memory. On meta the
  values do not exist: the mode answers with a placeholder (0, True, a zero CPU tensor; nonzero
  as if every element were true) and goes on: the path of a healthy run.
* pinned memory: meta tensors cannot be pinned, so `pin_memory_marks` patches
  `Tensor.pin_memory` to mark the host tensor (and return it) wherever the code under trace
  asks for pinning; an H2D copy from a marked tensor is asynchronous, from any other a sync.

lnlatten_fast's Triton custom ops are not counted as aten ops: `on_triton_op` (the profiler's)
runs their real host wrappers under the stand-in driver and adds one record per Triton launch;
the aten ops a wrapper runs itself (weight re-layout, the split-K sum, dtype casts) are counted
by a child counter and marked `inside`.
"""

from __future__ import annotations

import contextlib
import math
import weakref

# Ops that launch nothing on the device: views, metadata and allocations.
NO_LAUNCH = frozenset({
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
    "_unsafe_view", "_reshape_alias", "set_", "resize_", "record_stream", "is_same_size", "sym_size", "sym_stride",
    "sym_numel", "sym_storage_offset", "_has_compatible_shallow_copy_type", "is_pinned", "_pin_memory",
    "as_strided", "view", "t", "numpy_T", "expand", "permute", "transpose", "unsqueeze", "squeeze",
})
# Ops that overwrite their self without reading it.
WRITE_ONLY_SELF = frozenset({"copy_", "fill_", "zero_", "uniform_", "normal_", "random_", "bernoulli_",
                             "exponential_", "geometric_", "cauchy_", "log_normal_"})
# Ops whose output depends on device data the host must read first.
SYNC_OPS = {
    "_local_scalar_dense": "item()/bool()/float(): reads a device scalar",
    "nonzero": "nonzero: output size from device data",
    "is_nonzero": "is_nonzero: reads a device scalar",
    "equal": "equal: returns a host bool",
    "bincount": "bincount: reads max() on the host (CUDA)",
    "masked_select": "masked_select: output size from device data",
    "_unique2": "unique: output size from device data",
    "unique_dim": "unique: output size from device data",
    "unique_consecutive": "unique: output size from device data",
    "repeat_interleave": "repeat_interleave without output_size",
}
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "convolution_backward",
                      "cudnn_convolution", "_scaled_mm"})

# torch's multi_tensor_apply (ATen/native/cuda/MultiTensorApply.cuh): tensors and 65536-element
# chunks per launch by depth (number of tensor lists). CUDA >= 13 builds use the 32 KB kernel
# argument tables; earlier ones the 4 KB tables.
MTA_CHUNK = 65536
MTA_TABLES = {
    13: {"tensors": (770, 448, 336, 252, 210), "scalarlist": (672, 448, 336, 252, 210), "blocks": 2240},
    12: {"tensors": (110, 64, 48, 36, 30), "scalarlist": (96, 64, 48, 36, 30), "blocks": 320},
}
CUDA_MAJOR = 13  # the H200 run of 2026-12-04: torch 2.11.0+cu130


def mta_launches(numels, depth: int, scalarlist: bool = False, cuda_major: int = CUDA_MAJOR) -> int:
    """Kernel launches of multi_tensor_apply over tensors of these sizes (empty ones skipped):
    a launch whenever the tensors or the blocks of one launch are full, and one for the rest."""
    table = MTA_TABLES[13 if cuda_major >= 13 else 12]
    max_tensors = table["scalarlist" if scalarlist else "tensors"][depth - 1]
    max_blocks = table["blocks"]
    launches = tensors = blocks = 0
    for numel in numels:
        if numel == 0:
            continue
        tensors += 1
        chunks = -(-numel // MTA_CHUNK)
        for chunk in range(chunks):
            blocks += 1
            if (tensors == max_tensors and chunk == chunks - 1) or blocks == max_blocks:
                launches += 1
                blocks = 0
                tensors = 0 if chunk == chunks - 1 else 1
    return launches + (1 if blocks else 0)


def footprint(t) -> int:
    """Bytes at distinct addresses of a tensor: a stride-0 (broadcast) dim counts once."""
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class PinnedSet:
    """Host tensors the traced code pinned, by identity (a WeakSet would compare tensors with ==)."""

    def __init__(self):
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t) -> None:
        self._refs[id(t)] = weakref.ref(t)

    def __contains__(self, t) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t


def dtype_name(dtype) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}.get(
        dtype, str(dtype).removeprefix("torch."))


class StepCounter:
    """Context manager counting the device ops of whatever runs inside it (see the module
    docstring). `records` is the list of dicts; `phase` names what is running now (the
    backward is recognised by itself: autograd's current node)."""

    def __init__(self, device_type: str = "meta", *, on_triton_op=None, records=None, inside=None, parent=None):
        self.device_type = device_type
        self.on_triton_op = on_triton_op  # (counter, func, args, kwargs) -> outputs
        self.records = [] if records is None else records
        self.inside = inside
        self.parent = parent
        self.phase = "step"
        self.pinned = PinnedSet() if parent is None else parent.pinned
        self._mode = None

    def current_phase(self) -> str:
        import torch

        if self.parent is not None:
            return self.parent.current_phase()
        return "backward" if torch._C._current_autograd_node() is not None else self.phase

    def child(self, inside: str) -> "StepCounter":
        """A counter for the aten ops run inside a custom op's host wrapper."""
        return StepCounter(self.device_type, on_triton_op=None, records=self.records, inside=inside, parent=self)

    # ---- records -----------------------------------------------------------------------------------
    def add(self, op: str, *, part: str = "", launches: int = 0, flops: int = 0, read: int = 0, written: int = 0,
            kind: str = "memory", dtype: str = "", sync: str | None = None, transfer: int = 0, shape=None,
            note: str = "", **extra) -> dict:
        record = {"op": op, "part": part, "phase": self.current_phase(), "inside": self.inside,
                  "launches": launches, "flops": int(flops), "read": int(read), "written": int(written),
                  "transfer": int(transfer), "kind": kind, "dtype": dtype, "sync": sync,
                  "shape": list(shape) if shape is not None else None, "note": note, **extra}
        self.records.append(record)
        return record

    def on_device(self, t) -> bool:
        return t.device.type == self.device_type

    # ---- the mode ------------------------------------------------------------------------------------
    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return counter.dispatch(func, tuple(args), dict(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def dispatch(self, func, args, kwargs):
        import torch

        from .tracing import cudnn_layout, is_triton_op

        name = func.overloadpacket.__name__
        if is_triton_op(func):
            if self.on_triton_op is None:
                raise RuntimeError(f"{func._schema.name} inside another custom op: not expected")
            return self.on_triton_op(self, func, args, kwargs)
        inputs = [t for t in _tensors((args, kwargs))]
        dev_inputs = [t for t in inputs if self.on_device(t)]

        sync = self._sync_reason(func, name, args, kwargs, inputs)
        if name == "_local_scalar_dense" and self.on_device(args[0]):
            self.add(f"aten.{name}", launches=1, transfer=args[0].element_size(), kind="copy", sync=sync,
                     dtype=dtype_name(args[0].dtype), note="device -> host scalar")
            return _placeholder_scalar(args[0])
        if name in ("_to_copy", "copy_") and inputs:
            handled = self._copy(func, name, args, kwargs, sync)
            if handled is not None:
                return handled
        if sync is not None and name in ("masked_select", "_unique2", "unique_dim", "unique_consecutive",
                                         "equal", "is_nonzero") and dev_inputs:
            self.add(f"aten.{name}", launches=1, read=sum(footprint(t) for t in dev_inputs), kind="memory",
                     sync=sync, dtype=dtype_name(dev_inputs[0].dtype))
            return _placeholder_output(func, name, args)

        if name == "bincount" and dev_inputs:
            # No meta kernel. On CUDA: a max() reduction read back by the host, then the histogram.
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            t = args[0]
            self.add(f"aten.{name}", launches=2, read=2 * footprint(t), written=8 * max(minlength, 1),
                     transfer=t.element_size(), sync=sync, dtype=dtype_name(t.dtype))
            return torch.zeros(max(minlength, 1), dtype=torch.long, device=t.device)
        out = cudnn_layout(func, args, func(*args, **kwargs))
        outputs = [t for t in _tensors(out)]
        dev_outputs = [t for t in outputs if self.on_device(t)]
        if not dev_inputs and not dev_outputs:
            return out  # a host op
        self._count(func, name, args, kwargs, dev_inputs, dev_outputs, sync, out)
        return out

    # ---- syncs and copies ------------------------------------------------------------------------------
    def _sync_reason(self, func, name, args, kwargs, inputs):
        import torch

        if not any(self.on_device(t) for t in inputs):
            return None
        if name in SYNC_OPS:
            if name == "repeat_interleave" and kwargs.get("output_size") is not None:
                return None
            return SYNC_OPS[name]
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in indices):
                return f"{name} with a boolean mask: nonzero inside"
        return None

    def _copy(self, func, name, args, kwargs, sync):
        """Host <-> device copies: counted as transfers (with their sync, if any); None for a copy
        within one device, which is counted like any op."""
        import torch

        if name == "_to_copy":
            src = args[0]
            dst_device = kwargs.get("device") or src.device
            dst_device = torch.device(dst_device)
        else:
            dst, src = args[0], args[1]
            dst_device = dst.device
        src_dev, dst_dev = self.on_device(src), dst_device.type == self.device_type
        if src_dev == dst_dev:
            return None
        size = footprint(src)
        if src_dev:  # device -> host: the host waits for the copy (and everything before it)
            self.add(f"aten.{name}", part="device -> host", launches=1, transfer=size, kind="copy",
                     sync="copy to the host", dtype=dtype_name(src.dtype), shape=src.shape)
            if name == "_to_copy":
                dtype = kwargs.get("dtype") or src.dtype
                return torch.zeros(src.shape, dtype=dtype, device=dst_device)
            return dst
        pinned = src in self.pinned or (src._base is not None and src._base in self.pinned)
        self.add(f"aten.{name}", part="host -> device" + (" (pinned)" if pinned else " (pageable)"), launches=1,
                 transfer=size, kind="copy", sync=None if pinned else "pageable host -> device copy",
                 dtype=dtype_name(src.dtype), shape=src.shape)
        if name == "_to_copy":
            meta_src = torch.empty_strided(src.shape, src.stride(), dtype=src.dtype, device=dst_device)
            rest = {k: v for k, v in kwargs.items() if k != "device"}
            if rest.get("dtype") is not None and rest["dtype"] != src.dtype:
                # the cast after the copy happens on the device: one more launch
                out = meta_src.to(rest["dtype"])
                self.add("aten._to_copy", part="cast after the copy", launches=1, read=footprint(meta_src),
                         written=footprint(out), dtype=dtype_name(out.dtype), shape=out.shape)
                return out
            return meta_src
        return args[0]

    # ---- everything that computes ----------------------------------------------------------------------
    def _count(self, func, name, args, kwargs, dev_inputs, dev_outputs, sync, out):
        import torch

        if func.is_view or name in NO_LAUNCH:
            return
        if dev_outputs and all(t.numel() == 0 for t in dev_outputs) and not name.startswith("_foreach"):
            return  # an empty output: CUDA launches nothing
        dtype = dtype_name(next((t.dtype for t in dev_inputs if t.is_floating_point()),
                                dev_inputs[0].dtype if dev_inputs else dev_outputs[0].dtype))
        shape = dev_outputs[0].shape if dev_outputs else None
        read_set, write_set = self._read_written(func, name, args, kwargs, dev_inputs, dev_outputs)
        read, written = sum(map(footprint, read_set)), sum(map(footprint, write_set))
        op = f"aten.{name}"

        if name in ("convolution", "_convolution", "cudnn_convolution"):
            bias = args[2] if len(args) > 2 else None
            flops = _flops(func, args, kwargs, dev_outputs)
            gemm_read = read - (footprint(bias) if bias is not None else 0)
            self.add(op, launches=1, flops=flops, read=gemm_read, written=written, kind="gemm", dtype=dtype,
                     sync=sync, shape=shape, tf32=torch.backends.cudnn.allow_tf32)
            if bias is not None:  # cuDNN's conv takes no bias: a separate add over the output
                out = dev_outputs[0]
                self.add(op, part="bias add", launches=1, read=footprint(out) + footprint(bias),
                         written=footprint(out), dtype=dtype_name(out.dtype), shape=shape)
            return
        if name == "convolution_backward":
            grad_out, inp, weight = args[0], args[1], args[2]
            mask = args[-1]
            from torch.utils.flop_counter import flop_registry

            def part_flops(part_mask):  # torch's formula for one gradient at a time
                formula = flop_registry[func.overloadpacket]
                return int(formula(*args[:-1], part_mask, out_val=out))

            g_in, g_w, g_b = (list(_tensors(o))[0] if o is not None else None for o in _out_tuple(dev_outputs, mask))
            if mask[0] and g_in is not None:
                self.add(op, part="grad input", launches=1, flops=part_flops([True, False, False]), read=footprint(grad_out) + footprint(weight),
                         written=footprint(g_in), kind="gemm", dtype=dtype, shape=g_in.shape,
                         tf32=torch.backends.cudnn.allow_tf32)
            if mask[1] and g_w is not None:
                self.add(op, part="grad weight", launches=1, flops=part_flops([False, True, False]), read=footprint(grad_out) + footprint(inp),
                         written=footprint(g_w), kind="gemm", dtype=dtype, shape=g_w.shape,
                         tf32=torch.backends.cudnn.allow_tf32)
            if mask[2] and g_b is not None:  # a separate reduction over the output gradient
                self.add(op, part="grad bias (reduction)", launches=1, read=footprint(grad_out),
                         written=footprint(g_b), dtype=dtype, shape=g_b.shape)
            return
        if name in ("max_pool2d_with_indices_backward", "nll_loss_backward", "nll_loss2d_backward"):
            grad_in = dev_outputs[0]
            self.add(op, part="zero-fill", launches=1, written=footprint(grad_in), dtype=dtype, shape=shape)
            self.add(op, part="scatter", launches=1, read=read, written=footprint(args[0]) if name.startswith("max_pool")
                     else footprint(grad_in), dtype=dtype, shape=shape, sync=sync)
            return
        if name.startswith("_foreach_") or name in ("_fused_adamw_", "_fused_adam_", "_fused_adamw", "_fused_adam"):
            launches, note = self._foreach_launches(func, name, args, kwargs)
            if launches:
                self.add(op, launches=launches, read=read, written=written, dtype=dtype, sync=sync, note=note,
                         tensors=len(args[0]) if isinstance(args[0], (list, tuple)) else 0)
            return
        launches = 1
        if name == "cat":
            launches = max(1, math.ceil(len([t for t in args[0] if t.numel()]) / 128))
        flops = _flops(func, args, kwargs, dev_outputs) if name in GEMM_OPS else 0
        tf32 = torch.get_float32_matmul_precision() != "highest"
        self.add(op, launches=launches, flops=flops, read=read, written=written,
                 kind="gemm" if flops else "memory", dtype=dtype, sync=sync, shape=shape,
                 **({"tf32": tf32} if flops else {}))

    def _read_written(self, func, name, args, kwargs, dev_inputs, dev_outputs):
        written = {id(t): t for t in dev_outputs}
        write_only = set()
        for i, arg in enumerate(func._schema.arguments):
            value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
            if value is None:
                continue
            if arg.alias_info is not None and arg.alias_info.is_write:
                for t in _tensors(value):
                    if self.on_device(t):
                        written[id(t)] = t
                        if (i == 0 and name in WRITE_ONLY_SELF) or arg.name == "out" or arg.kwarg_only:
                            write_only.add(id(t))
        read = {}
        for t in dev_inputs:
            if id(t) not in write_only:
                read[id(t)] = t
        return list(read.values()), list(written.values())

    def _foreach_launches(self, func, name, args, kwargs):
        """(launches, note) of a foreach op or a fused Adam/AdamW on the device."""
        import torch

        lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
        lists += [v for v in kwargs.values() if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor)]
        lists = [lst for lst in lists if all(self.on_device(t) for t in lst)]
        if not lists:
            return 0, ""
        first = lists[0]
        if name.startswith("_fused_adam"):
            depth = 4  # params, grads, exp_avgs, exp_avg_sqs (+ max_exp_avg_sqs with amsgrad)
            if len(args) > 4 and isinstance(args[4], (list, tuple)) and args[4]:
                depth = 5
            return mta_launches([t.numel() for t in first], depth), f"fused multi_tensor_apply, depth {depth}"
        inplace = name.endswith("_")
        depth = len(lists) + (0 if inplace else 1)
        overload = func._overloadname
        scalarlist = "ScalarList" in overload or any(
            isinstance(a, (list, tuple)) and a and not isinstance(a[0], torch.Tensor) for a in args)
        fast = all(t.dtype == first[0].dtype for t in first) and all(
            torch._prims_common.is_non_overlapping_and_dense_or_false(lst[i]) and lst[i].stride() == first[i].stride()
            and lst[i].shape == first[i].shape and lst[i].dtype == first[i].dtype
            for lst in lists for i in range(len(first)))
        if not fast or depth > 5:
            return len([t for t in first if t.numel()]), "slow path: one launch per tensor"
        return (mta_launches([t.numel() for t in first], depth, scalarlist),
                f"multi_tensor_apply, depth {depth}" + (", scalar list" if scalarlist else ""))


def _out_tuple(dev_outputs, mask):
    """convolution_backward's three outputs in order (None where the mask skips one)."""
    it = iter(dev_outputs)
    return [next(it, None) if m else None for m in mask]


def _flops(func, args, kwargs, outputs) -> int:
    from torch.utils.flop_counter import flop_registry

    formula = flop_registry.get(func.overloadpacket)
    if formula is None:
        return 0
    out = outputs[0] if len(outputs) == 1 else tuple(outputs)
    return int(formula(*args, **kwargs, out_val=out))


def _placeholder_scalar(t):
    if t.dtype.is_floating_point:
        return 0.0
    if t.dtype == __import__("torch").bool:
        return True  # "all finite", "no error": the branch a healthy run takes
    return 0


def _placeholder_output(func, name, args):
    import torch

    t = args[0]
    if name in ("equal", "is_nonzero"):
        return True
    return torch.empty((0,), dtype=t.dtype, device=t.device)


@contextlib.contextmanager
def nonzero_assumes_all_true():
    """nonzero (and boolean-mask indexing) on meta as if every element were true: the shapes of
    a healthy run (all logits finite), where torch's meta kernel refuses by default."""
    from torch.fx.experimental import _config

    with _config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


@contextlib.contextmanager
def pin_memory_marks(counter: StepCounter):
    """Tensor.pin_memory marks the host tensor pinned for `counter` and returns it (meta has no
    pinned memory and this torch may have no accelerator to pin for)."""
    import torch

    original = torch.Tensor.pin_memory

    def pin_memory(self, *args, **kwargs):
        counter.pinned.add(self)
        return self

    torch.Tensor.pin_memory = pin_memory
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original
