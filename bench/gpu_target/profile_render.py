"""The whole-step profiler's markdown (DIR/step.md): every number labelled an estimate."""

from __future__ import annotations

RULES = [
    "launches: one CUDA launch per aten op that computes on the device; none for views, metadata, "
    "allocations and empty outputs. Eager CUDA's known extras: a convolution with a bias is cuDNN's kernel "
    "plus a bias-add launch; convolution_backward one launch per gradient, the bias gradient a separate "
    "reduction; max-pool and nll_loss backward zero-fill first (+1); cat copies <= 128 inputs per launch; "
    "foreach ops and fused Adam/AdamW chunk as torch's multi_tensor_apply (CUDA >= 13 tables: tensors per "
    "launch by depth 770/448/336/252/210, 2240 blocks of 65536 elements), a non-dense or mismatched list "
    "one launch per tensor; a host<->device copy is one launch (a memcpy on the stream)",
    "bytes: every device tensor an op reads plus every one it writes, once per op, as its footprint "
    "(elements at distinct addresses x element size); in-place ops read and write self; copy_/fill_/zero_/"
    "random fills only write. non-GEMM bytes: every op without FLOPs (bias adds, bias-gradient reductions, "
    "pool zero-fills, casts, element-wise, the Triton wrappers' own aten ops included), the optimizer and "
    "host<->device copies excluded. Optimizer bytes: everything inside optimizer.step",
    "FLOPs: torch.utils.flop_counter's formulas (mm, addmm, bmm, baddbmm, convolution and its backward); "
    "the Triton convs' from their host wrappers' LaunchPlans; the L1 attention 4·B·M²·D forward, "
    "10·B·M²·D backward",
    "host syncs: _local_scalar_dense (item(), bool(), float(), is_nonzero()), nonzero, equal, bincount, "
    "masked_select, unique, indexing with a boolean mask, any copy to the host, and host-to-device copies "
    "from pageable memory. Pinned: where the package asks for it (BatchLoader pins host batches for CUDA; "
    "Tensor.pin_memory is intercepted, since meta cannot pin)",
    "time per op = max(FLOPs / (0.70 x dense peak), bytes / (0.80 x HBM)) + 4 us per launch (no CUDA graph); "
    "the Triton conv launches at the compile report's estimate (wgmma 0.70 of peak with SM fill, + 4 us); "
    "host<->device copies at 0.80 of the host link (assumed). Ops run one after another: no overlap (the CUDA "
    "loader's copies run on a side stream and would overlap; they are added in full)",
    "bf16: CUDA autocast's policy emulated on meta (fp32 master weights cast to bf16 at each use by "
    "convolutions, linear, matmul, einsum and lnlatten_fast's ops; the loss in fp32; fp32 gradients for the "
    "fp32 weights)",
]


def _gb(n) -> str:
    return f"{n / 1e9:.2f}"


def _ms(s) -> str:
    return f"{s * 1e3:.3f}"


def render(report: dict) -> str:
    t, p = report["totals"], report["protocol"]
    lines = [
        f"# Step profile: {report['arch']} ({report['gpu']}), preset {report['preset']}, batch {report['batch']}, "
        f"{report['precision']}, {report['mode']}",
        "",
        f"**{report['label']}.** Every time here is an estimate from the fixed table below; the H200 run of "
        "2026-12-04 measured the step at 54.7 ms eager and 43.7 ms compiled (bench/results/2026-12-04-h200).",
        "",
        f"- traced: {report['step_api']} on meta tensors standing for cuda:0 ({report['optimizer']}); "
        f"backend triton (auto's first choice on CUDA; its measured choice may differ per conv)",
        f"- compiled: {report['compiled_with']}",
        f"- dataset: {report['dataset']['name']} ({p['train_images']} train, {p['test_images']} test images), "
        f"{p['epochs']} epochs",
        "- patched for the trace: " + "; ".join(report["patches"]),
        "- not traced: " + "; ".join(report["not_traced"]),
        "",
        "## Totals (estimate)",
        "",
        "| what | estimate |",
        "|---|---:|",
        f"| launches per step | {t['launches']} |",
        f"| FLOPs per step, traced (analytic: {report['analytic_gflop_per_image']:.1f} GFLOP/img) "
        f"| {t['flops'] / 1e9:.0f} GFLOP |",
        f"| GEMM/conv bytes (read + written) | {_gb(t['gemm_bytes'])} GB |",
        f"| non-GEMM bytes (optimizer excluded) | {_gb(t['non_gemm_bytes'])} GB |",
        f"| optimizer bytes | {_gb(t['optimizer_bytes'])} GB |",
        f"| host <-> device bytes | {t['transfer_bytes'] / 1e6:.2f} MB |",
        f"| host syncs per step | {t['host_syncs_per_step']} |",
        f"| est. step | {t['est_step_ms']:.2f} ms ({t['launch_overhead_ms']:.2f} ms of it launch overhead) |",
        f"| est. images/s | {t['est_images_per_second']:.0f} |",
        f"| FLOP floor (useful FLOPs at 100% dense peak) | {t['floor_ms']:.2f} ms |",
        f"| floor / estimate | {t['floor_fraction']:.1%} |",
        f"| est. {p['epochs']}-epoch protocol, warm-up included | {p['est_protocol_seconds'] / 60:.1f} min |",
        "",
        "## Per phase (estimate)",
        "",
        "| phase | launches | GFLOP | GB | est. ms | host syncs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ph in report["phases"].items():
        lines.append(f"| {name} | {ph['launches']} | {ph['flops'] / 1e9:.1f} | {_gb(ph['bytes'])} | {ph['ms']:.3f} "
                     f"| {ph['syncs']} |")
    lines += ["", "## Host syncs per step", ""]
    lines += [f"- {s['phase']}: {s['op']} {s['part']}: {s['reason']}" for s in report["syncs"]] or ["- none"]
    if report.get("inductor"):
        ind = report["inductor"]
        lines += [
            "", "## Compiled graph (inductor, CPU lowering; counts mapped as stated)", "",
            f"- {ind['graphs']} graph(s); CPU scheduler: {ind['cpu_generated_kernels']} generated kernels, "
            f"{ind['cpu_optimizer_kernels']} of them the optimizer's per-tensor foreach kernels, regrouped as CUDA's "
            f"combo kernels into {ind['cuda_foreach_combo_kernels']}; counted: {ind['generated_kernels']} generated "
            f"kernels, {ind['extern_gemm_launches']} extern GEMM/conv launches, {ind['extern_other_launches']} other "
            f"extern launches, {ind['triton_op_calls']} Triton op calls (their launches from the eager trace)",
            f"- inductor's compile (trace + lowering + code generation, no C++ build) took "
            f"{ind['compile_seconds']:.0f} s here (measured on this CPU)",
        ]
    lines += [
        "", "## Ops (estimate, largest first)", "",
        "| phase | op | part | calls | launches | GFLOP | MB read | MB written | est. us | bound | syncs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for g in report["ops"][:report.get("ops_shown", 60)]:
        op = g["op"] + (f" (in {g['inside'].split('::')[-1]})" if g["inside"] else "")
        lines.append(f"| {g['phase']} | {op} | {g['part']} | {g['calls']} | {g['launches']} | {g['flops'] / 1e9:.2f} "
                     f"| {g['read'] / 1e6:.1f} | {g['written'] / 1e6:.1f} | {g['seconds'] * 1e6:.0f} | {g['bound']} "
                     f"| {g['syncs']} |")
    if len(report["ops"]) > report.get("ops_shown", 60):
        lines.append(f"| ... {len(report['ops']) - report.get('ops_shown', 60)} more in step.json | | | | | | | | | | |")
    w = p["warm_up"]
    lines += [
        "", f"## Per epoch and the protocol (estimate, {p['steps_per_epoch']} steps of {report['batch']} per epoch)", "",
        "| what | per epoch | note |",
        "|---|---:|---|",
        f"| training steps | {p['train_seconds_per_epoch']:.1f} s | {p['steps_per_epoch']} x {t['est_step_ms']:.2f} ms |",
        f"| evaluation | {p['eval_seconds_per_epoch']:.2f} s | {p['eval_batches_per_epoch']} batches of "
        f"{report['batch']}, eager forward (traced: evaluate()) |",
        f"| checkpoints | {_gb(p['checkpoint_bytes_per_epoch'])} GB, {p['checkpoint_blocking_seconds_per_epoch']:.2f} s "
        f"blocking | best.pt {_gb(report['checkpoint']['best'])} GB (on an improving epoch) + last.pt "
        f"{_gb(report['checkpoint']['last'])} GB; blocking: {p['checkpoint_blocking']} |",
        f"| attention trace | {p['trace_seconds_per_epoch'] * 1e3:.1f} ms | {p['trace_records']} records over the run |",
        f"| epoch | {p['epoch_seconds']:.1f} s | |",
        f"| warm-up | {p['warm_up_seconds']:.1f} s | Triton JIT {w['triton_jit_seconds']:.1f} s (measured on this CPU: "
        f"{report['triton']['jit_builds']} of {report['triton']['binaries']} binaries built, the rest from "
        f"TRITON_CACHE_DIR at 0 s), inductor {w['inductor_compile_seconds']:.1f} s (measured here), the first step "
        "and an eval batch |",
        f"| protocol | {p['est_protocol_seconds'] / 60:.1f} min | warm-up + {p['epochs']} epochs |",
        "",
        "## Fixed table and rules",
        "",
        f"Peaks ({report['gpu']}, datasheet, dense): bf16 {report['peaks']['tensor_16bit'] / 1e12:.1f} TFLOP/s, "
        f"TF32 {report['peaks']['tensor_tf32'] / 1e12:.1f}, fp32 {report['peaks']['fma_fp32'] / 1e12:.1f}, "
        f"HBM {report['peaks']['hbm'] / 1e12:.1f} TB/s, host link {report['peaks']['pcie'] / 1e9:.0f} GB/s. "
        f"Table: GEMM/conv {report['table']['gemm_efficiency']:.2f} of dense peak, memory-bound "
        f"{report['table']['hbm_efficiency']:.2f} of HBM, {report['table']['launch_seconds'] * 1e6:.0f} us per "
        f"launch; assumed beyond it: host link {report['table']['pcie_efficiency']:.2f}, disk "
        f"{report['table']['disk_bytes_per_second'] / 1e9:.0f} GB/s.",
        "",
    ]
    lines += [f"- {rule}" for rule in report["rules"]]
    base = report.get("baseline")
    if base:
        lines += ["", "## Baseline (the issue's count of the eager step before issue 18)", "",
                  f"about {base['launches']} launches, {base['non_gemm_gb']} GB non-GEMM, {base['optimizer_gb']} GB "
                  f"optimizer, {base['host_syncs']} host syncs per step; acceptance asks of the compiled step <= 40% of "
                  "the eager launches and non-GEMM bytes, and 0 host syncs"]
    return "\n".join(lines) + "\n"
