"""Roofline estimates, never measurements.

The compile report's (`estimate_launch`, `build_estimate`), per SimpleNet conv launch from the
host wrappers' LaunchPlans:
  time = max(issued FLOPs / (peak(dtype, MMA) x efficiency(MMA)) / SM fill, bytes / HBM bandwidth)
issued FLOPs include the tiles' padding (MMA-row and K utilisation); SM fill is the last wave's
idle slots: programs / (ceil(waves) x slots), slots = SMs x CTAs/SM from the binary's occupancy.
Efficiency per MMA class is `targets.EFFICIENCY`. Bytes are compulsory traffic (each input read
once, each output written once), so the memory term is a floor. Kernels with scalar 16-bit
activation loads are outside this model (their loads, not the MMA, bind): flagged.

The step profiler's (`op_seconds`), per traced op with the fixed `targets.STEP_TABLE`:
  time = max(FLOPs / (gemm_efficiency x dense peak), bytes / (hbm_efficiency x HBM)) + launches x launch_seconds
"""

from __future__ import annotations

import dataclasses
import math

from .targets import EFFICIENCY, PEAKS, SCALAR_16BIT_LOADS, STEP_TABLE, ArchSpec, Peaks, StepTable


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


def op_seconds(flops: float, bytes_: float, launches: int, peak: float, peaks: Peaks,
               table: StepTable = STEP_TABLE) -> float:
    """The step profiler's time for one op (see the module docstring); `peak` is the dense
    FLOP/s of its operands (targets.peak_flops), unused when flops is 0."""
    compute = flops / (table.gemm_efficiency * peak) if flops else 0.0
    return max(compute, bytes_ / (table.hbm_efficiency * peaks.hbm)) + launches * table.launch_seconds
