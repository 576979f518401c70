"""bench/profile_step.py: the whole-step profiler (launches, FLOPs, bytes, host syncs and an
estimated time of one training step, traced on meta tensors for a named GPU).

The counting rules are checked in process against hand-computed values on small op sequences;
the command itself runs once in a subprocess (tiny preset, eager; the Triton kernels compile
for sm_90a as in test_compile_report, so TRITON_INTERPRET is removed from its environment),
alongside the bad-input cases. The compiled mode's counting runs in process on a toy step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "profile_step.py"
sys.path.insert(0, str(SCRIPT.parent))
from gpu_target import counting, estimate, inductor, profile_report, targets  # noqa: E402
from gpu_target.autocast import EmulatedAutocast  # noqa: E402

ARGS = ["--arch", "sm_90a", "--preset", "tiny", "--batch", "2", "--precision", "bf16", "--mode", "eager"]
TOTALS = ("launches", "non_gemm_bytes", "optimizer_bytes", "host_syncs_per_step", "est_step_ms",
          "est_images_per_second", "floor_fraction", "est_protocol_seconds")


def _env(cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PTXAS_OPTIONS")}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    return env


@pytest.fixture(scope="module", autouse=True)
def started(tmp_path_factory):
    """The command's run, started with the module (its Triton JIT takes most of this file's
    time) so that the in-process tests run beside it."""
    root = tmp_path_factory.mktemp("profile_step")
    job = subprocess.Popen([sys.executable, str(SCRIPT), *ARGS, "--dataset-size", "1000,300", "--out", str(root / "out")],
                           cwd=REPO, env=_env(root / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield job, root / "out"
    if job.poll() is None:
        job.kill()
        job.communicate()


@pytest.fixture(scope="module")
def run(started):
    pytest.importorskip("triton.backends.nvidia")
    job, out = started
    stdout, stderr = job.communicate(timeout=600)
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr), out


def _meta(*shape, **kw):
    return torch.empty(*shape, device="meta", **kw)


# ---- counting, by hand ------------------------------------------------------------------------------
def test_conv_relu_linear_counted_by_hand():
    """conv (2,3,8,8) * (4,3,3,3) + bias, pad 1; relu; linear 256 -> 5 with bias, fp32.
    cuDNN's conv and its separate bias add, one relu, one addmm (the weight's t() is a view)."""
    x, w, b = _meta(2, 3, 8, 8), _meta(4, 3, 3, 3), _meta(4)
    lw, lb = _meta(5, 256), _meta(5)
    with counting.StepCounter() as counter:
        h = F.relu(F.conv2d(x, w, b, padding=1))
        F.linear(h.flatten(1), lw, lb)
    rows = [(r["op"], r["part"], r["launches"], r["flops"], r["read"], r["written"]) for r in counter.records]
    out = 2 * 4 * 8 * 8 * 4  # bytes of the conv's output
    assert rows == [
        ("aten.convolution", "", 1, 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3), 2 * 3 * 8 * 8 * 4 + 4 * 27 * 4, out),
        ("aten.convolution", "bias add", 1, 0, out + 4 * 4, out),
        ("aten.relu", "", 1, 0, out, out),
        ("aten.addmm", "", 1, 2 * 2 * 256 * 5, 5 * 4 + out + 5 * 256 * 4, 2 * 5 * 4),
    ]
    assert [r["kind"] for r in counter.records] == ["gemm", "memory", "memory", "gemm"]
    assert not any(r["sync"] for r in counter.records)


def test_backward_extras_and_in_place_bytes():
    """convolution_backward: one launch per gradient, the bias gradient a reduction; max-pool
    backward zero-fills first; an in-place add reads and writes its self."""
    x = _meta(2, 3, 8, 8, requires_grad=True)
    w, b = _meta(4, 3, 3, 3, requires_grad=True), _meta(4, requires_grad=True)
    y = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)
    with counting.StepCounter() as counter:
        y.sum().backward()
    parts = [(r["op"], r["part"]) for r in counter.records if r["launches"]]
    assert ("aten.convolution_backward", "grad input") in parts
    assert ("aten.convolution_backward", "grad weight") in parts
    assert ("aten.convolution_backward", "grad bias (reduction)") in parts
    assert ("aten.max_pool2d_with_indices_backward", "zero-fill") in parts
    assert ("aten.max_pool2d_with_indices_backward", "scatter") in parts
    t = _meta(10)
    with counting.StepCounter() as counter:
        t.add_(1.0)
    assert [(r["read"], r["written"]) for r in counter.records] == [(40, 40)]


def test_item_is_a_host_sync():
    with counting.StepCounter() as counter:
        value = _meta(3).sum().item()  # planted: the host waits for the device
    assert value == 0.0  # meta has no values: a placeholder
    syncs = [r for r in counter.records if r["sync"]]
    assert [r["op"] for r in syncs] == ["aten._local_scalar_dense"]
    assert "item()" in syncs[0]["sync"]


def test_host_device_copies_pageable_pinned_and_back():
    counter = counting.StepCounter()
    with counter, counting.pin_memory_marks(counter):
        pageable = torch.zeros(16, dtype=torch.uint8)
        pinned = torch.zeros(16, dtype=torch.uint8).pin_memory()
        on_device = pageable.to("meta", non_blocking=True)
        pinned.to("meta", non_blocking=True)
        on_device.float().cpu()
    copies = [(r["part"], r["transfer"], r["sync"]) for r in counter.records if r["kind"] == "copy"]
    assert copies == [
        ("host -> device (pageable)", 16, "pageable host -> device copy"),
        ("host -> device (pinned)", 16, None),
        ("device -> host", 64, "copy to the host"),
    ]


def test_foreach_chunking_follows_multi_tensor_apply():
    # CUDA >= 13 tables: depth 1 takes 770 tensors per launch; 2240 blocks of 65536 elements.
    assert counting.mta_launches([1] * 770, 1) == 1
    assert counting.mta_launches([1] * 771, 1) == 2
    assert counting.mta_launches([2240 * 65536 + 1], 1) == 2
    assert counting.mta_launches([1] * 65, 2, cuda_major=12) == 2  # older tables: 64 at depth 2
    assert counting.mta_launches([0, 0], 1) == 0
    tensors = [_meta(3) for _ in range(771)]
    with counting.StepCounter() as counter:
        torch._foreach_mul_(tensors, 2.0)
    assert [(r["op"], r["launches"], r["read"], r["written"]) for r in counter.records] == [
        ("aten._foreach_mul_", 2, 771 * 12, 771 * 12)]


def test_emulated_autocast_casts_as_cuda_autocast():
    """Linear in bf16 with the fp32 weight cast once per region (autocast's cache), the input at
    each use; softmax in fp32; fp32 gradients for the fp32 weight."""
    weight = torch.nn.Parameter(_meta(5, 4))
    x = _meta(2, 4)
    with EmulatedAutocast(torch.bfloat16) as emulation:
        a = F.linear(x, weight)
        b = F.linear(x, weight)
        s = torch.softmax(a, dim=1)
    assert a.dtype == b.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert emulation.casts == 3
    (a.float().sum() + b.float().sum()).backward()
    assert weight.grad.dtype == torch.float32


def test_time_per_op_uses_the_fixed_table():
    peaks, table = targets.PEAKS[90], targets.STEP_TABLE
    assert (table.gemm_efficiency, table.hbm_efficiency, table.launch_seconds) == (0.70, 0.80, 4e-6)
    memory = estimate.op_seconds(0, 8e9, 2, peaks.tensor_16bit, peaks)
    assert memory == pytest.approx(8e9 / (0.80 * 4.8e12) + 2 * 4e-6)
    gemm = estimate.op_seconds(1e12, 1e6, 1, peaks.tensor_16bit, peaks)
    assert gemm == pytest.approx(1e12 / (0.70 * 989.4e12) + 4e-6)
    records = [{"kind": "memory", "flops": 0, "read": 4e9, "written": 4e9, "launches": 2, "dtype": "fp32",
                "transfer": 0, "phase": "backward", "sync": None}]
    profile_report.assign_seconds(records, [], {}, targets.ARCHS["sm_90a"], peaks)
    assert records[0]["seconds"] == pytest.approx(memory)
    totals = profile_report.totals(records, 64, 137.5e9 * 64, peaks.tensor_16bit)
    assert totals["non_gemm_bytes"] == 8e9 and totals["launches"] == 2
    assert totals["floor_fraction"] == pytest.approx(137.5e9 * 64 / 989.4e12 / memory)


def test_trace_records_over_the_protocol():
    # 3 epochs of 4 steps, every 5th step of the run and each epoch's last: 4, 5, 8, 10, 12.
    assert profile_report.trace_records(3, 4, 5) == 5
    assert profile_report.trace_records(3, 4, 0) == 0


def test_compiled_graph_counts_kernels_and_regroups_foreach():
    """Inductor (code generation only) on a toy step: conv, relu, linear, cross-entropy,
    backward and a foreach AdamW in one graph. The optimizer's per-tensor kernels become CUDA's
    combo kernels; the conv and linear stay extern GEMMs."""
    torch._dynamo.reset()

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 8 * 8, 7)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).flatten(1))

    from torch.optim.adam import adam

    model = Toy()
    params = list(model.parameters())
    steps = [torch.zeros(()) for _ in params]
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]

    def body(x, y):  # TrainStep's compiled body: Optimizer.step breaks the graph on purpose
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            adam(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, foreach=True, capturable=True,
                 differentiable=False, fused=False, decoupled_weight_decay=True, amsgrad=False, beta1=0.9,
                 beta2=0.999, lr=1e-3, weight_decay=0.01, eps=1e-8, maximize=False)
        return loss.detach()

    sink = []
    compiled = torch.compile(body, fullgraph=True, backend=inductor.lowering_backend)
    try:
        with inductor.codegen_only(sink), torch._dynamo.config.patch(trace_autograd_ops=True):
            try:
                compiled(torch.empty(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
            except inductor._Compiled:
                pass
    finally:
        torch._dynamo.reset()  # no compiled code of this test left for the next
    rows = [r for graph in sink for r in graph]
    names = [r["name"] for r in rows if r["kind"] == "extern gemm"]
    assert any("convolution" in n for n in names) and any(n.split(".")[-1] in ("mm", "addmm") or "mm" in n for n in names)
    per_tensor = [r for r in rows if r.get("foreach")]
    assert len(per_tensor) >= 4  # four parameters, at least one kernel each
    regrouped = inductor.regroup_foreach(rows, 250)
    combos = [r for r in regrouped if r["kind"] == "foreach combo"]
    assert combos and sum(r["launches"] for r in combos) < len(per_tensor)
    assert sum(r["bytes"] for r in combos) == sum(r["bytes"] for r in per_tensor)


# ---- the command --------------------------------------------------------------------------------------
def test_writes_step_json_and_md_with_the_totals(run):
    result, out = run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((out / "step.json").read_text())
    assert set(TOTALS) <= set(report["totals"])
    t = report["totals"]
    assert t["launches"] > 100 and t["host_syncs_per_step"] == 0  # the device generator: no syncs
    assert t["non_gemm_bytes"] > 0 and t["optimizer_bytes"] > 0 and t["est_step_ms"] > 0
    assert t["est_images_per_second"] == pytest.approx(2 / (t["est_step_ms"] / 1e3))
    assert 0 < t["floor_fraction"] < 1
    assert report["protocol"]["steps_per_epoch"] == 500 and report["protocol"]["eval_batches_per_epoch"] == 150
    assert report["step_api"].startswith("lnlatten_fast.training.step")
    # every Triton launch of the step is there, with the compile report's estimate
    triton = [r for r in report["records"] if r["kind"] == "triton"]
    assert len(triton) == 6 * 3 + 2 and all(r["seconds"] > 0 for r in triton)
    phases = {r["phase"] for r in report["records"]}
    assert {"data", "forward", "loss", "backward", "optimizer"} <= phases
    markdown = (out / "step.md").read_text()
    assert "ESTIMATE" in markdown and "## Totals (estimate)" in markdown
    assert "| host syncs per step | 0 |" in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "sm_70"], "error: --arch sm_70: expected one of sm_80"),
        (["--arch", "sm_89"], "error: --arch sm_89: expected an arch with datasheet peaks"),
        (["--preset", "huge"], "error: --preset huge: expected tiny or paper"),
        (["--batch", "-1"], "error: --batch -1: expected a positive integer"),
        (["--precision", "fp8"], "error: --precision fp8: expected bf16 or fp32"),
        (["--mode", "graph"], "error: --mode graph: expected eager or compiled"),
        (["--dataset-size", "12271"], "error: --dataset-size 12271: expected TRAIN,TEST"),
        (["--bogus", "1"], "error: --bogus 1: expected only --arch"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, argv, message):
    good = dict(zip(ARGS[::2], ARGS[1::2]), **{"--out": str(tmp_path)})
    extra = []
    if argv[0] in good:
        good[argv[0]] = argv[1]
    else:
        extra = argv
    result = subprocess.run([sys.executable, str(SCRIPT), *[x for kv in good.items() for x in kv], *extra],
                            env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "step.json").exists()
