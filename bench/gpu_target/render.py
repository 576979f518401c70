"""The compile report's markdown (DIR/kernels.md)."""

from __future__ import annotations

CAVEAT = "compiled, not run: no GPU executed these kernels"


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
