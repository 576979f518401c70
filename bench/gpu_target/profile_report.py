"""The whole-step profiler's numbers from its records: time per op (the fixed table of
targets.STEP_TABLE; the Triton conv launches at the compile report's estimate), the step's
totals, its ops grouped, the per-epoch costs and the protocol's wall clock. ESTIMATES: nothing
here ran on a GPU."""

from __future__ import annotations

import math
from collections import defaultdict

from .estimate import estimate_launch, op_seconds
from .targets import STEP_TABLE, ArchSpec, Peaks, StepTable, peak_flops

STEP_PHASES = ("data", "forward", "loss", "backward", "graph", "optimizer")
LABEL = "ESTIMATE (from shapes, dtypes and datasheet peaks; nothing ran on a GPU)"


def assign_seconds(records: list, launches: list, rows_by_hash: dict, spec: ArchSpec, peaks: Peaks,
                   table: StepTable = STEP_TABLE) -> None:
    """Each record's estimated `seconds` (and `bound`), in place."""
    for r in records:
        if r["kind"] == "triton" and r.get("planned"):
            launch = launches[r["launch_index"]]
            row = rows_by_hash[launch["hash"]]
            dtype = r["dtype"] if r["dtype"] in ("bf16", "fp16") else ("fp32" if r.get("tf32", True) else "fp32-exact")
            est = estimate_launch(launch["plan"], row, spec, peaks, dtype)
            r["seconds"] = est["seconds"] + r["launches"] * table.launch_seconds
            r["bound"] = "MMA" if est["bound"] == "MMA" else "memory"
        elif r["kind"] == "copy":
            r["seconds"] = r["transfer"] / (table.pcie_efficiency * peaks.pcie) + r["launches"] * table.launch_seconds
            r["bound"] = "PCIe"
        else:
            peak = peak_flops(peaks, r["dtype"], r.get("tf32", True))
            r["seconds"] = op_seconds(r["flops"], r["read"] + r["written"], r["launches"], peak, peaks, table)
            compute = r["flops"] / (table.gemm_efficiency * peak) if r["flops"] else 0.0
            memory = (r["read"] + r["written"]) / (table.hbm_efficiency * peaks.hbm)
            launch = r["launches"] * table.launch_seconds
            r["bound"] = "compute" if compute >= memory and r["flops"] else ("launch" if launch > memory else "memory")


def is_gemm(record: dict) -> bool:
    return record["kind"] in ("gemm", "triton") and record["flops"] > 0


def totals(records: list, batch: int, floor_flops: float, peak: float) -> dict:
    """The step's totals over the training-step phases (data pipeline to optimizer)."""
    step = [r for r in records if r["phase"] in STEP_PHASES]
    seconds = sum(r["seconds"] for r in step)
    nbytes = lambda r: r["read"] + r["written"]  # noqa: E731
    floor = floor_flops / peak
    return {
        "launches": sum(r["launches"] for r in step),
        "flops": sum(r["flops"] for r in step),
        "gemm_bytes": sum(nbytes(r) for r in step if is_gemm(r) and r["phase"] != "optimizer"),
        "non_gemm_bytes": sum(nbytes(r) for r in step if not is_gemm(r) and r["kind"] != "copy" and r["phase"] != "optimizer"),
        "optimizer_bytes": sum(nbytes(r) for r in step if r["phase"] == "optimizer"),
        "transfer_bytes": sum(r["transfer"] for r in step),
        "host_syncs_per_step": sum(1 for r in step if r["sync"]),
        "est_step_ms": seconds * 1e3,
        "est_images_per_second": batch / seconds if seconds else 0.0,
        "floor_ms": floor * 1e3,
        "floor_fraction": floor / seconds if seconds else 0.0,
        "launch_overhead_ms": sum(r["launches"] for r in step) * STEP_TABLE.launch_seconds * 1e3,
    }


def by_phase(records: list) -> dict:
    phases = defaultdict(lambda: {"launches": 0, "flops": 0, "bytes": 0, "ms": 0.0, "syncs": 0})
    for r in records:
        p = phases[r["phase"]]
        p["launches"] += r["launches"]
        p["flops"] += r["flops"]
        p["bytes"] += r["read"] + r["written"] + r["transfer"]
        p["ms"] += r["seconds"] * 1e3
        p["syncs"] += 1 if r["sync"] else 0
    return dict(phases)


def grouped(records: list) -> list:
    """Records grouped by (phase, op, part, inside), largest estimated time first."""
    groups = {}
    for r in records:
        key = (r["phase"], r["op"], r["part"], r["inside"] or "")
        g = groups.setdefault(key, {"phase": r["phase"], "op": r["op"], "part": r["part"], "inside": r["inside"],
                                    "calls": 0, "launches": 0, "flops": 0, "read": 0, "written": 0, "transfer": 0,
                                    "seconds": 0.0, "syncs": 0, "dtype": r["dtype"]})
        g["calls"] += 1
        for k in ("launches", "flops", "read", "written", "transfer", "seconds"):
            g[k] += r[k]
        g["syncs"] += 1 if r["sync"] else 0
        g.setdefault("_bound_seconds", defaultdict(float))[r.get("bound", "")] += r["seconds"]
    for g in groups.values():  # the bound that holds most of the group's time
        by_bound = g.pop("_bound_seconds")
        g["bound"] = max(by_bound, key=by_bound.get)
    return sorted(groups.values(), key=lambda g: -g["seconds"])


def syncs(records: list) -> list:
    return [{"phase": r["phase"], "op": r["op"], "part": r["part"], "reason": r["sync"]} for r in records if r["sync"]]


# ---- the protocol --------------------------------------------------------------------------------------------
def trace_records(epochs: int, steps_per_epoch: int, every: int) -> int:
    """AttentionTrace.maybe_record's records over the run: every `every`-th step of the run and
    each epoch's last step."""
    if every <= 0:
        return 0
    count = 0
    for epoch in range(1, epochs + 1):
        for step in range(1, steps_per_epoch + 1):
            global_step = (epoch - 1) * steps_per_epoch + step
            if global_step % every == 0 or step == steps_per_epoch:
                count += 1
    return count


def protocol(*, step_seconds: float, first_step_seconds: float, eval_one: float, eval_two: float,
             trace_seconds: float, checkpoint: dict, background_writer: bool, train: int, test: int, batch: int,
             epochs: int, trace_every: int, jit_seconds: float, compile_seconds: float, peaks: Peaks,
             table: StepTable = STEP_TABLE) -> dict:
    """Per-epoch costs and the protocol's estimated wall clock, warm-up included."""
    steps = train // batch if train > batch else 1  # the trainer drops the last partial batch when it can
    eval_batches = math.ceil(test / batch)
    per_batch = max(0.0, eval_two - eval_one)
    eval_seconds = eval_one + (eval_batches - 1) * per_batch
    records = trace_records(epochs, steps, trace_every)
    pcie = table.pcie_efficiency * peaks.pcie
    if background_writer:
        # The loop waits for the snapshot into pinned host memory (best.pt shares its copies);
        # the disk write runs on the writer's thread.
        checkpoint_seconds = checkpoint["last"] / pcie
        blocking = "snapshot of last.pt to host memory (the writer thread writes to disk)"
    else:
        checkpoint_seconds = (checkpoint["last"] + checkpoint["best"]) * (1 / pcie + 1 / table.disk_bytes_per_second)
        blocking = "best.pt and last.pt copied to the host and written to disk in the loop"
    warm_up = jit_seconds + compile_seconds + first_step_seconds + eval_one
    epoch_seconds = steps * step_seconds + eval_seconds + checkpoint_seconds
    total = warm_up + epochs * epoch_seconds + records * trace_seconds
    return {
        "train_images": train, "test_images": test, "epochs": epochs, "steps_per_epoch": steps,
        "eval_batches_per_epoch": eval_batches,
        "train_seconds_per_epoch": steps * step_seconds,
        "eval_seconds_per_epoch": eval_seconds,
        "checkpoint_bytes_per_epoch": checkpoint["last"] + checkpoint["best"],
        "checkpoint_blocking_seconds_per_epoch": checkpoint_seconds,
        "checkpoint_blocking": blocking,
        "trace_records": records,
        "trace_seconds_per_epoch": records * trace_seconds / epochs,
        "warm_up_seconds": warm_up,
        "warm_up": {"triton_jit_seconds": jit_seconds, "inductor_compile_seconds": compile_seconds,
                    "first_step_seconds": first_step_seconds, "eval_batch_seconds": eval_one},
        "epoch_seconds": epoch_seconds + records * trace_seconds / epochs,
        "est_protocol_seconds": total,
    }
