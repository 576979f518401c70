"""bench/compile_report.py: every Triton kernel of a training step compiled for sm_90a, no GPU.

conftest sets TRITON_INTERPRET=1 for the whole suite, so the report (which must compile real
GPU code) runs in subprocesses with TRITON_INTERPRET removed and its own TRITON_CACHE_DIR.
The module fixture starts three processes at once (2 cores: about 30 s in all): the report
for the tiny preset (bf16, batch 2), the same report with a ptxas that rejects every build,
and a real CPU step of the same model that records what the Triton ops are called with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "compile_report.py"
sys.path.insert(0, str(SCRIPT.parent))
# Standard library only at import; used for their pure helpers.
from gpu_target import estimate, targets  # noqa: E402
from gpu_target import ptx as ptx_analysis  # noqa: E402

BATCH = 2
REPORT_ARGS = ["--arch", "sm_90a", "--preset", "tiny", "--batch", str(BATCH), "--dtypes", "bf16"]

# A real step on CPU (conv layouts from real CPU kernels, which pick channels-last by the same
# rule as cuDNN). The Triton ops are not run (the interpreter would take minutes): each call
# is recorded and answered with what the op's fake kernel returns, re-made on CPU. The fakes
# allocate like the real ops, so every later call sees the arguments a full run would.
_CPU_STEP = r"""
import json, sys
import torch
from torch.utils._python_dispatch import TorchDispatchMode
import lnlatten_fast as lf
sys.path.insert(0, "bench")  # run from the repository root
from gpu_target.tracing import describe  # the report's own description of an op's arguments

calls = []

class FakeTritonOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not func._schema.name.startswith("lnlatten_fast::"):
            return func(*args, **kwargs)
        calls.append({"qualname": func._schema.name, "args": describe(list(args))})
        out = func(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
        on_cpu = lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
        return tuple(on_cpu(o) for o in out) if isinstance(out, tuple) else on_cpu(out)

torch.manual_seed(0)
model = lf.LNLAttenNet(lf.LNLConfig.tiny(backend="triton")).to(torch.bfloat16).channels_last().train()
x = torch.randn(BATCH, 3, 64, 64, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
with FakeTritonOps():
    logits = model(x).logits
    lf.lnl_loss(logits.float(), torch.zeros(BATCH, dtype=torch.long), model).backward()
json.dump(calls, open(sys.argv[1], "w"))
""".replace("BATCH", str(BATCH))


def _env(cache_dir=None, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PTXAS_OPTIONS")}
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_report")
    ok, fail = root / "ok", root / "fail"
    jobs = {
        "ok": subprocess.Popen(
            [sys.executable, str(SCRIPT), *REPORT_ARGS, "--out", str(ok / "out")], cwd=REPO,
            env=_env(ok / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        # ptxas rejects an unknown option: every kernel fails where a real ptxas error would.
        "fail": subprocess.Popen(
            [sys.executable, str(SCRIPT), *REPORT_ARGS, "--out", str(fail / "out")], cwd=REPO,
            env=_env(fail / "cache", PTXAS_OPTIONS="--no-such-option"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        # The acceptance shape of the Hopper tiling: the paper preset, batch 64.
        "paper": subprocess.Popen(
            [sys.executable, str(SCRIPT), "--arch", "sm_90a", "--preset", "paper", "--batch", "64", "--dtypes", "bf16",
             "--out", str(root / "paper" / "out")], cwd=REPO,
            env=_env(root / "paper" / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        # cwd=REPO and `-c`: the checkout's package, as the report imports it.
        "cpu": subprocess.Popen(
            [sys.executable, "-c", _CPU_STEP, str(root / "cpu_calls.json")], cwd=REPO,
            env=_env(TRITON_INTERPRET="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    results = {}
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    return {"root": root, "ok_dir": ok, "fail_dir": fail, **results}


@pytest.fixture(scope="module")
def report(runs):
    result = runs["ok"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return json.loads((runs["ok_dir"] / "out" / "kernels.json").read_text())


def test_every_kernel_of_a_training_step_compiles(report):
    assert report["failures"] == []
    assert report["arch"] == "sm_90a" and report["capability"] == 90
    # Six SimpleNet convs, each forward + grad input + grad weight, plus the attention's two.
    assert report["launch_count"] == 6 * 3 + 2
    rows = report["kernels"]
    assert rows and all(row["dtype"] == "bf16" for row in rows)
    for row in rows:
        assert ("conv" in row["name"]) != ("attention" in row["name"]), row["name"]

    ops = {use["op"]: set() for row in rows for use in row["uses"]}
    for row in rows:
        for use in row["uses"]:
            ops[use["op"]] |= set(use["layers"])
    assert ops == {
        "patch_conv3x3 fwd": {"1"},
        "patch_conv3x3 grad_input": {"1"},
        "patch_conv3x3 grad_weight": {"1"},
        "grouped_conv3x3 fwd": {"2", "3", "4", "5", "6"},
        "grouped_conv3x3 grad_input": {"2", "3", "4", "5", "6"},
        "grouped_conv3x3 grad_weight": {"2", "3", "4", "5", "6"},
        "l1_nonlocal_attention fwd": set(),
        "l1_nonlocal_attention bwd": set(),
    }
    names = {use["op"]: row["name"] for row in rows for use in row["uses"]}
    assert names["l1_nonlocal_attention bwd"] == "_l1_attention_backward_kernel"
    assert names["patch_conv3x3 grad_weight"] == "_conv3x3_bwd_weight_kernel"

    for row in rows:
        assert 0 < row["registers"] <= 255
        assert row["spill_bytes"] is not None and row["spill_bytes"] >= 0
        assert row["mma"] in ("wgmma", "mma.sync", "FMA")
        if "conv" in row["name"]:  # bf16 operands go to the tensor cores
            assert row["mma"] in ("wgmma", "mma.sync"), row
            assert row["num_warps"] in (4, 8) and row["num_stages"] == 2
        assert row["occupancy"]["ctas_per_sm"] >= 1
        assert row["grids"] and all(len(g) == 3 and min(g) >= 1 for g in row["grids"])
        assert sum(row["global_loads"].values()) + sum(row["cp_async"].values()) > 0  # it reads memory


def test_paper_shape_convs_are_shaped_for_hopper(runs):
    """At the paper preset, B = 64, bf16: every conv kernel of the step on wgmma, no spills, its
    activations and gradients loaded as 16-byte cp.async (at most a handful of scalar 16-bit
    loads), >= 2 CTAs/SM, full MMA rows, and the estimated SimpleNet step within 3x of the
    FLOP floor (an estimate: see the report)."""
    result = runs["paper"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((runs["root"] / "paper" / "out" / "kernels.json").read_text())
    convs = [row for row in report["kernels"] if "conv" in row["name"]]
    assert len(convs) >= 12
    for row in convs:
        assert row["mma"] == "wgmma", row["used_by"]
        assert row["spill_bytes"] == 0, row["used_by"]
        assert row["global_loads"].get("16", 0) <= targets.SCALAR_16BIT_LOADS, row["used_by"]
        assert row["cp_async"].get("16", 0) > 0, row["used_by"]
        assert row["occupancy"]["ctas_per_sm"] >= 2, row["used_by"]
        for launch in row["estimate"]["launches"]:
            assert launch["mma_row_utilisation"] == 1.0, (row["used_by"], launch)
    step = report["estimate"]["steps"]["bf16"]
    assert step["flagged"] == []
    assert 1.0 < step["total_seconds"] / step["floor_seconds"] < 3.0
    assert round(step["forward_flops"] / 1e9) == 870 and round(step["backward_flops"] / 1e9) == 1739
    assert "ESTIMATE" in (runs["root"] / "paper" / "out" / "kernels.md").read_text()


def test_estimate_against_hand_computed_values():
    """One launch: 264 slots, 300 programs -> 2 waves, 300/528 fill; MMA-bound time."""
    row = {"occupancy": {"ctas_per_sm": 2}, "mma": "wgmma"}
    plan = {"programs": 300, "flops": 10**12, "issued_flops": 2 * 10**12, "rows": 3, "row_slots": 4, "bytes": 10**6}
    est = estimate.estimate_launch(plan, row, targets.ARCHS["sm_90a"], targets.PEAKS[90], "bf16")
    assert est["waves"] == round(300 / 264, 2) and est["sm_fill"] == round(300 / 528, 3)
    assert est["mma_row_utilisation"] == 0.75 and est["mac_utilisation"] == 0.5
    expected = 2e12 / (989.4e12 * 0.70) / (300 / 528)
    assert abs(est["seconds"] - expected) < 1e-12 and est["bound"] == "MMA"
    plan["bytes"] = 10**12  # now the compulsory traffic binds
    assert estimate.estimate_launch(plan, row, targets.ARCHS["sm_90a"], targets.PEAKS[90], "bf16")["bound"] == "memory"


def test_cubins_land_in_the_cache_and_match_the_report(runs, report):
    from triton import knobs

    cache = (runs["ok_dir"] / "cache").resolve()
    cubins = sorted(cache.rglob("*.cubin"))
    assert len(cubins) == len(report["kernels"])  # one binary per row, nothing else compiled
    assert sorted(Path(row["cubin"]).resolve() for row in report["kernels"]) == cubins
    for row in report["kernels"]:
        cubin = Path(row["cubin"])
        assert cubin.read_bytes()[:4] == b"\x7fELF"
        assert ".target sm_90a" in Path(row["ptx"]).read_text()
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        assert f"Function {row['name']}:" in usage
        assert int(re.search(r"REG:(\d+)", usage).group(1)) == row["registers"]


def test_markdown_report(runs, report):
    markdown = (runs["ok_dir"] / "out" / "kernels.md").read_text()
    assert "compiled, not run: no GPU executed these kernels" in markdown
    assert "sm_90a" in markdown and "preset tiny" in markdown and f"batch {BATCH}" in markdown
    assert f"triton {report['triton_version']}" in markdown
    kernels_part, estimate_part = markdown.split("## ESTIMATE")
    table = [line for line in kernels_part.splitlines() if line.startswith("| _")]
    assert len(table) == len(report["kernels"])
    assert all(line in runs["ok"].stdout for line in table)  # the table is printed too
    planned = [launch for launch in report["launches"] if "plan" in launch]
    assert len(planned) == 6 * 3  # every conv launch of the step, none of the attention's
    assert len([line for line in estimate_part.splitlines() if line.startswith("| _")]) == len(planned)


def test_the_meta_step_calls_the_ops_as_a_real_step_does(runs, report):
    """Same op calls, in the same order, with the same shapes, strides (F9 and Q, K, V
    channels-last derived), dtypes and flags as a real CPU step: the specialisations the
    report compiled are those of a real run."""
    cpu = runs["cpu"]
    assert cpu.returncode == 0, cpu.stderr[-4000:]
    real = json.loads((runs["root"] / "cpu_calls.json").read_text())
    meta = [{"qualname": c["qualname"], "args": c["args"]} for c in report["calls"]]
    assert len(real) == report["launch_count"]
    assert meta == real


def test_a_compile_error_exits_nonzero_and_names_the_kernel(runs):
    result = runs["fail"]
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(r"^error: _conv3x3_fwd_kernel \(patch_conv3x3 fwd, layer 1, bf16\) failed: PTXASError",
                     result.stderr, re.MULTILINE), result.stderr[-2000:]
    failed = json.loads((runs["fail_dir"] / "out" / "kernels.json").read_text())
    assert {f["kernel"] for f in failed["failures"]} >= {
        "_conv3x3_fwd_kernel", "_conv3x3_bwd_input_kernel", "_conv3x3_bwd_weight_kernel",
        "_l1_attention_forward_kernel", "_l1_attention_backward_kernel"}
    assert "Unknown option" in (runs["fail_dir"] / "out" / "compile_errors.log").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "sm_70"], "error: --arch sm_70: expected one of sm_80"),
        (["--preset", "huge"], "error: --preset huge: expected tiny or paper"),
        (["--batch", "0"], "error: --batch 0: expected a positive integer"),
        (["--dtypes", "bf16,int8"], "error: --dtypes bf16,int8: expected a comma list"),
        (["--image-size", "100"], "error: --image-size 100: expected a positive multiple of 16"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, argv, message):
    good = {"--arch": "sm_90a", "--preset": "tiny", "--batch": "2", "--dtypes": "bf16", "--out": str(tmp_path)}
    good.update(dict(zip(argv[::2], argv[1::2])))
    result = subprocess.run([sys.executable, str(SCRIPT), *[x for kv in good.items() for x in kv]],
                            env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_refuses_the_interpreter(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), *REPORT_ARGS, "--out", str(tmp_path)],
                            env=_env(tmp_path / "cache", TRITON_INTERPRET="1"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: TRITON_INTERPRET=1")
    assert not (tmp_path / "kernels.json").exists()


def test_occupancy_against_hand_computed_values():
    sm90, sm89 = targets.ARCHS["sm_90a"], targets.ARCHS["sm_89"]
    # 232 regs: 7424 per warp -> 8 warps of 65536 -> one 8-warp CTA.
    assert ptx_analysis.occupancy(sm90, 232, 0, 8)["ctas_per_sm"] == 1
    # 95 regs: 3040 -> 3072 per warp -> 21 warps -> 5 CTAs of 4 warps (smem allows 20).
    occ = ptx_analysis.occupancy(sm90, 95, 10240, 4)
    assert (occ["ctas_per_sm"], occ["warps_per_sm"], occ["limited_by"]) == (5, 20, ["registers"])
    # 100000 B + 1 KiB reserved -> 101120 B (128-byte granules); 228 KiB holds 2.
    occ = ptx_analysis.occupancy(sm90, 32, 100000, 4)
    assert (occ["ctas_per_sm"], occ["limited_by"]) == (2, ["shared memory"])
    # sm_89: 48 warps per SM -> 12 CTAs of 4 warps at 32 registers (registers allow 16).
    occ = ptx_analysis.occupancy(sm89, 32, 0, 4)
    assert (occ["ctas_per_sm"], occ["warps_per_sm"], occ["limited_by"]) == (12, 48, ["warps"])
    # Tiny kernels hit the 32-CTA limit on sm_90.
    assert ptx_analysis.occupancy(sm90, 16, 0, 1)["ctas_per_sm"] == 32


def test_ptx_features_on_hand_written_ptx():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    ld.global.v4.b32 { %r5, %r6, %r7, %r8 }, [ %rd2 + 0 ];
    @%p2 ld.global.L1::evict_last.b16 { %rs1 }, [ %rd3 + 0 ];
    ld.global.nc.v2.b32 { %r9, %r10 }, [ %rd4 + 0 ];
    cp.async.cg.shared.global [ %r11 + 0 ], [ %rd5 + 0 ], 0x10, %r12;
    cp.async.ca.shared.global [ %r13 + 0 ], [ %rd6 + 0 ], 4, %r14;
    cp.async.commit_group;
    st.global.v2.b32 [ %rd7 + 0 ], { %r15, %r16 };
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1,%f2,%f3,%f4}, {%r1,%r2,%r3,%r4}, {%r5,%r6}, {%f1,%f2,%f3,%f4};
    """
    features = ptx_analysis.ptx_features(ptx)
    assert features["mma"] == "mma.sync"
    assert features["global_loads"] == {"16": 1, "64": 1, "128": 2}
    assert features["cp_async"] == {"4": 1, "16": 1}
    assert features["global_stores"] == {"64": 1}
    assert features["tma_bulk"] == 0
    assert ptx_analysis.ptx_features("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 ...;\nmma.sync")["mma"] == "wgmma"
    assert ptx_analysis.ptx_features("fma.rn.f32 %f1, %f2, %f3, %f4;")["mma"] == "FMA"
    assert ptx_analysis.ptx_features("cp.async.bulk.tensor.2d.shared::cluster.global [%r1], [%rd1, {%r2, %r3}];")["tma_bulk"] == 1
