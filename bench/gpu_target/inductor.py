"""The compiled step's kernels, counted from inductor's scheduler without a GPU.

Inductor cannot lower for CUDA here: this torch is a CPU build, and fake CUDA tensors do not get
as far as the model's initialisation (`uniform_` decomposes into a copy that torch refuses with
"not linked with support for cuda devices"). So the step is compiled by inductor FOR THE CPU:
the model is built on the CPU (initialised, as the trainer builds it; nothing else is computed), `TrainStep(compile=
True)` traces forward, loss, backward and AdamW as one graph with Dynamo, and a backend of ours
runs `compile_fx` on it up to code generation. The C++ compiler is never called (each kernel's
build is replaced by a stub) and the compiled graph is never run.

What is counted, per scheduler node after fusion (`graph_nodes`):
* a generated kernel (SchedulerNode, FusedSchedulerNode): one launch, its buffers' bytes
  (`get_read_write_buffers_sizes`, read + written);
* an extern kernel: convolution, mm, bmm, addmm, baddbmm (one launch; convolution_backward one
  per gradient it returns, as the eager CUDA path), other aten fallbacks (one; two for the
  max-pool backwards, which zero-fill first), lnlatten_fast's Triton ops (left out here: the
  profiler takes their launches from the eager trace, the same host wrappers);
* MultiOutput and Nop nodes: nothing.
Where CPU and CUDA lowering differ, as counted: on CUDA inductor groups a foreach op's per-tensor
kernels into combo kernels of at most `combo_kernel_max_num_args` (250) buffers; the CPU backend
has no foreach grouping and emits one kernel per tensor. The optimizer's per-tensor kernels
(any origin a `_foreach_*` op; inductor may have fused the gradient's last op into one) are
therefore regrouped by their foreach ops and counted as CUDA's partitions, all their bytes the
optimizer's. Other fusion decisions are the CPU backend's.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

GEMM_EXTERNS = ("convolution", "mm", "bmm", "addmm", "baddbmm")


class _Compiled(Exception):
    """Raised instead of running the compiled graph: the trace is all we need."""


@contextlib.contextmanager
def codegen_only(sink: list):
    """compile_fx without C++ builds: each kernel's build is a stub, and every lowered graph's
    scheduler nodes are summarised into `sink` after code generation."""
    import torch._inductor.async_compile as async_compile
    from torch._inductor import config
    from torch._inductor import graph as inductor_graph

    original_codegen = inductor_graph.GraphLowering.codegen
    saved = {name: getattr(async_compile.AsyncCompile, name) for name in ("cpp_pybinding", "cpp")
             if hasattr(async_compile.AsyncCompile, name)}

    def codegen(self, *args, **kwargs):
        out = original_codegen(self, *args, **kwargs)
        sink.append(graph_nodes(self.scheduler.nodes))
        return out

    def stub(*args, **kwargs):
        def not_built(*a, **k):
            raise _Compiled("the profiler builds no kernels")
        return not_built

    inductor_graph.GraphLowering.codegen = codegen
    for name in saved:
        setattr(async_compile.AsyncCompile, name, stub)
    try:
        # No cache: a cache hit skips code generation, which is what is counted.
        with config.patch(force_disable_caches=True, compile_threads=1):
            yield
    finally:
        inductor_graph.GraphLowering.codegen = original_codegen
        for name, value in saved.items():
            setattr(async_compile.AsyncCompile, name, value)


def _origins(node) -> list:
    nodes = node.get_nodes() if hasattr(node, "get_nodes") else [node]
    out = []
    for sub in nodes:
        ir = getattr(sub, "node", None)
        out.extend(getattr(ir, "origins", ()) or ())
    return out


def _extern_name(ir) -> str:
    name = getattr(ir, "python_kernel_name", None) or type(ir).__name__
    return str(name).removeprefix("extern_kernels.").removeprefix("torch.ops.")


def _gemm(ir) -> tuple[int, str]:
    """(FLOPs, operand dtype) of an extern GEMM from its FX origin, by torch's flop formulas."""
    import torch
    from torch.utils.flop_counter import flop_registry

    for origin in getattr(ir, "origins", ()) or ():
        target = getattr(origin, "target", None)
        packet = getattr(target, "overloadpacket", None)
        if packet is None or packet not in flop_registry:
            continue
        args = torch.fx.node.map_arg(origin.args, lambda n: n.meta.get("val"))
        kwargs = torch.fx.node.map_arg(origin.kwargs, lambda n: n.meta.get("val"))
        dtype = next((str(a.dtype).removeprefix("torch.") for a in args
                      if isinstance(a, torch.Tensor) and a.is_floating_point()), "")
        try:
            return int(flop_registry[packet](*args, **kwargs, out_val=origin.meta.get("val"))), dtype
        except Exception:  # noqa: BLE001 - a formula that cannot read these args counts nothing
            return 0, dtype
    return 0, ""


def graph_nodes(nodes) -> list:
    """One dict per scheduler node: kind, name, launches, bytes, FLOPs, foreach signature."""
    rows = []
    for node in nodes:
        kind = type(node).__name__
        row = {"kind": kind, "bytes": int(node.get_read_write_buffers_sizes()), "launches": 0, "flops": 0,
               "name": "", "foreach": None, "dtype": ""}
        if kind == "NopKernelSchedulerNode":
            continue
        if kind == "ExternKernelSchedulerNode":
            ir = node.node
            name = _extern_name(ir)
            row["name"] = name
            if type(ir).__name__ == "MultiOutput":
                continue
            if name.startswith("lnlatten_fast."):
                row["kind"] = "triton op"
            elif name.split(".")[0].removeprefix("aten.") in GEMM_EXTERNS or "convolution" in name:
                row["kind"] = "extern gemm"
                row["flops"], row["dtype"] = _gemm(ir)
                outputs = [o for o in getattr(ir, "outputs", []) or [] if o is not None]
                row["launches"] = max(1, len(outputs)) if "convolution_backward" in name else 1
            else:
                row["kind"] = "extern"
                row["launches"] = 2 if "max_pool" in name and "backward" in name else 1
            if not row["dtype"]:
                try:
                    row["dtype"] = str(ir.get_dtype()).removeprefix("torch.")
                except Exception:  # noqa: BLE001 - multi-output externs have no single dtype
                    row["dtype"] = ""
        else:
            targets = sorted({str(getattr(o, "target", "")) for o in _origins(node)})
            row["name"] = ",".join(targets)
            row["launches"] = 1
            row["kind"] = "kernel"
            foreach = [t for t in targets if t.startswith("aten._foreach_")]
            if foreach:  # a subkernel of a foreach op (inductor may have fused its producer into it)
                row["foreach"] = ",".join(foreach)
                row["buffers"] = len(node.read_writes.reads | node.read_writes.writes)
        rows.append(row)
    return rows


def regroup_foreach(rows: list, max_args: int) -> list:
    """The optimizer's per-tensor kernels as CUDA's foreach combo kernels: per foreach
    signature, greedy partitions of at most `max_args` buffers (ComboKernel.horizontal_partition)."""
    out = [r for r in rows if r.get("foreach") is None]
    groups = defaultdict(list)
    for r in rows:
        if r.get("foreach") is not None:
            groups[r["foreach"]].append(r)
    for signature, members in groups.items():
        partitions, count = 0, 0
        for r in members:
            n = r.get("buffers", 1)
            if count == 0 or count + n > max_args:
                partitions += 1
                count = n
            else:
                count += n
        out.append({"kind": "foreach combo", "name": signature, "launches": partitions, "flops": 0, "dtype": "",
                    "bytes": sum(r["bytes"] for r in members), "foreach": signature, "cpu_kernels": len(members)})
    return out


def lowering_backend(gm, example_inputs):
    """A torch.compile backend: inductor's compile_fx on the graph (under `codegen_only`: up to
    code generation); the callable it returns raises _Compiled instead of running anything."""
    from torch._inductor.compile_fx import compile_fx

    compile_fx(gm, example_inputs)

    def run(*args):
        raise _Compiled("not run")
    return run


def lower_step(step, cfg, batch: int, sink: list) -> None:
    """Trace `step` (a compiled TrainStep) on a (batch, C, S, S) input and lower its graph with
    inductor, code generation only; the scheduler's rows land in `sink`. Nothing runs."""
    import torch

    step._graph_step = torch.compile(step._compiled_body, fullgraph=True, backend=lowering_backend)
    size = cfg.image_size
    x = torch.empty(batch, cfg.in_channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long)
    with codegen_only(sink):
        try:
            step(x, y)
        except _Compiled:
            pass


def compile_step(cfg, batch: int, precision: str, lr: float, weight_decay: float) -> dict:
    """Trace the package's compiled TrainStep on the CPU and lower it with inductor (code
    generation only). Returns the scheduler's rows, the regrouped rows and the seconds it took."""
    from torch._inductor import config as inductor_config

    from lnlatten_fast.ops import dispatch

    from .profile import build

    key = ("triton", "cpu")
    saved = dispatch._AVAILABILITY.get(key)
    # The Triton ops are traced by their fakes and become extern calls; nothing runs them.
    dispatch._AVAILABILITY[key] = (True, "profiler: traced, never run")
    sink: list = []
    start = time.perf_counter()
    try:
        # Real CPU tensors (about 16 bytes per parameter with AdamW's state): Dynamo reads them
        # while tracing; nothing is computed with them.
        model, optimizer, step, which = build(cfg, precision, lr, weight_decay, compile=True, device="cpu")
        if getattr(step, "_graph_step", None) is None:
            raise RuntimeError(f"{which} has no compiled graph to lower (compile=True gave none)")
        lower_step(step, cfg, batch, sink)
    finally:
        if saved is None:
            dispatch._AVAILABILITY.pop(key, None)
        else:
            dispatch._AVAILABILITY[key] = saved
    seconds = time.perf_counter() - start
    rows = [r for graph in sink for r in graph]
    max_args = inductor_config.combo_kernel_max_num_args
    return {"rows": rows, "cuda_rows": regroup_foreach(rows, max_args), "graphs": len(sink), "seconds": seconds,
            "combo_kernel_max_num_args": max_args, "step_api": which}


def summarise(result: dict) -> dict:
    rows = result["rows"]
    cpu_kernels = sum(1 for r in rows if r["kind"] == "kernel")
    return {
        "graphs": result["graphs"],
        "cpu_generated_kernels": cpu_kernels,
        "cpu_optimizer_kernels": sum(1 for r in rows if r.get("foreach")),
        "cuda_foreach_combo_kernels": sum(r["launches"] for r in result["cuda_rows"] if r["kind"] == "foreach combo"),
        "generated_kernels": sum(r["launches"] for r in result["cuda_rows"] if r["kind"] in ("kernel", "foreach combo")),
        "extern_gemm_launches": sum(r["launches"] for r in rows if r["kind"] == "extern gemm"),
        "extern_other_launches": sum(r["launches"] for r in rows if r["kind"] == "extern"),
        "triton_op_calls": sum(1 for r in rows if r["kind"] == "triton op"),
        "compile_seconds": result["seconds"],
        "bytes_total": sum(r["bytes"] for r in rows),
    }
