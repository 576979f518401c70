"""What users run, side by side per backend: the SimpleNet ensemble, a whole training step, and
inference. pytest-benchmark groups each comparison; every result's `extra_info` holds the
work (GFLOP, from lnlatten_fast.accounting), achieved GFLOP/s, images/s, and the fraction of
this machine's matmul peak measured in the same run (fp32 on CPU; bf16 on CUDA: MFU).

    pytest bench/bench_model.py --benchmark-only --benchmark-group-by=group --benchmark-json=out.json
    python bench/report.py out.json            # the README's tables

Sizes: on CPU small batches keep the whole bench/ suite under 10 minutes on 2 cores; on CUDA
the paper preset runs at B = 64. Backends that cannot run here are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

import lnlatten_fast as lf
from lnlatten_fast.accounting import forward_flops, training_step_flops
from lnlatten_fast.data.pipeline import device_batch
from lnlatten_fast.ops.dispatch import resolve_name
from lnlatten_fast.training.step import TrainStep, build_optimizer
from lnlatten_fast.training.telemetry import GpuMonitor

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (preset, batch) of the training-step benchmarks.
STEP_CASES = [("tiny", 64), ("paper", 64)] if CUDA else [("tiny", 32), ("paper", 2)]
DTYPES = ["fp32", "bf16"] if CUDA or os.environ.get("LNL_BENCH_CPU_BF16") else ["fp32"]
BACKENDS = ["reference", "native", "triton", "auto"]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def usable(backend: str) -> bool:
    try:
        resolve_name(backend, DEVICE)
    except RuntimeError:
        return False
    return True


def backend_params():
    return [pytest.param(b, marks=pytest.mark.skipif(not usable(b), reason=f"{b} cannot run on {DEVICE.type}"))
            for b in BACKENDS]


@pytest.fixture(scope="session", autouse=True)
def gpu_monitor():
    """NVML sampled in a thread for the whole session (CUDA only; a no-op elsewhere)."""
    with GpuMonitor(DEVICE) as monitor:
        yield monitor


def _account(benchmark, flops_per_call: float, images_per_call: int, matmul_peak, monitor=None):
    seconds = benchmark.stats.stats.median
    peak = matmul_peak.read()  # interleaved with the benchmarks; the JSON gets the run's best
    if monitor is not None and monitor.active:  # utilisation, memory, power over this benchmark
        benchmark.extra_info["gpu"] = monitor.summary(reset=True)
    benchmark.extra_info.update(
        device=str(DEVICE), gflop=flops_per_call / 1e9, gflop_per_s=flops_per_call / seconds / 1e9,
        images_per_s=images_per_call / seconds, of_peak=flops_per_call / seconds / 1e9 / peak,
        matmul_peak_gflop_per_s=peak,
    )


def _model(preset: str, backend: str):
    cfg = lf.LNLConfig.preset(preset, backend=backend)
    torch.manual_seed(0)
    model = lf.LNLAttenNet(cfg).to(DEVICE).channels_last()
    return cfg, model


def _batch(cfg, batch: int):
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_classes, (batch,), device=DEVICE)
    return x, y


# ---- a full training step ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("preset,batch", STEP_CASES, ids=[p for p, _ in STEP_CASES])
def test_training_step(benchmark, measure, matmul_peak, gpu_monitor, preset, batch, backend, compiled, dtype):
    """The trainer's own step (training/step.py: forward, eq. 3 loss with the decoupled L2,
    backward, its AdamW with two parameter groups; compiled: all of it one graph), fed the way
    the trainer feeds it (device_batch: uint8 copy, scaling, flip and crop drawn on the device): images/s."""
    if compiled and backend not in (("auto", "reference") if CUDA else ("auto",)):
        pytest.skip("torch.compile is benchmarked for auto (and, on CUDA, reference: the GPU target's baseline)")
    if compiled and not CUDA and preset == "paper":
        pytest.skip("compiling the paper model takes minutes on a CPU")
    cfg, model = _model(preset, backend)
    host = torch.randint(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    labels = torch.randint(0, cfg.num_classes, (batch,))
    if CUDA:
        host, labels = host.pin_memory(), labels.pin_memory()
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=2 * cfg.l2_lambda, tensor_lr=compiled)
    train_step = TrainStep(model, optimizer, precision=dtype, device=DEVICE, compile=compiled)

    def batch_on_device():
        return device_batch(host, labels, DEVICE, augment_batch=True, generator=generator,
                            crop_padding=cfg.image_size // 16)

    if compiled:
        train_step.warm_up(*batch_on_device())  # the compile, outside the timed rounds

    def step():
        train_step(*batch_on_device())
        _sync()

    benchmark.group = f"training step, {preset}, B={batch}, {dtype}"
    benchmark.extra_info.update(backend=backend + (" compiled" if compiled else ""), preset=preset, batch=batch, dtype=dtype)
    measure(step)
    _account(benchmark, batch * training_step_flops(cfg), batch, matmul_peak, gpu_monitor)


# ---- the SimpleNet ensemble alone ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_params())
def test_simplenet_fwd_bwd(benchmark, measure, matmul_peak, gpu_monitor, backend):
    batch = 64 if CUDA else 2
    cfg, model = _model("paper", backend)
    f9 = torch.randn(batch, cfg.unet_widths[0], cfg.image_size, cfg.image_size, device=DEVICE,
                     requires_grad=True).contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if CUDA else torch.float32
    ensemble = model.head.patches

    def step():
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=CUDA):
            out = ensemble(f9)
        out.float().sum().backward()
        _sync()

    benchmark.group = f"SimpleNet ensemble fwd + bwd, paper, B={batch}"
    benchmark.extra_info.update(backend=backend, preset="paper", batch=batch)
    measure(step)
    simplenet = forward_flops(cfg)["simplenet"]
    _account(benchmark, batch * 3 * simplenet, batch, matmul_peak, gpu_monitor)


# ---- inference latency ---------------------------------------------------------------------------------
INFERENCE_CASES = [("paper", 1), ("paper", 64)] if CUDA else [("paper", 1), ("tiny", 64)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("preset,batch", INFERENCE_CASES, ids=[f"{p}-B{b}" for p, b in INFERENCE_CASES])
def test_inference(benchmark, measure, matmul_peak, gpu_monitor, preset, batch, backend):
    cfg, model = _model(preset, backend)
    model.eval()
    x, _ = _batch(cfg, batch)

    @torch.no_grad()
    def infer():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            model(x)
        _sync()

    benchmark.group = f"inference, {preset}, B={batch}"
    benchmark.extra_info.update(backend=backend, preset=preset, batch=batch)
    measure(infer)
    _account(benchmark, batch * forward_flops(cfg)["total"], batch, matmul_peak, gpu_monitor)
