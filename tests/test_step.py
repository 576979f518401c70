"""training/step.py: the one training step (eager and compiled), its warm-up, the optimizer,
and the trainer's steady state without host syncs."""

from __future__ import annotations

import copy

import pytest
import torch

import lnlatten_fast as lf
from helpers import micro_config, small_settings
from lnlatten_fast.data.pipeline import augment
from lnlatten_fast.training import step as step_module
from lnlatten_fast.training.host_syncs import HostSyncCounter
from lnlatten_fast.training.step import TrainStep, build_optimizer


def _batch(cfg, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, cfg.num_classes, (batch,), generator=g)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return lf.LNLAttenNet(cfg).channels_last()


# ---- the optimizer ---------------------------------------------------------------------------
def test_optimizer_is_fused_where_torch_has_it_with_the_two_groups():
    model = _model(lf.LNLConfig.tiny(image_size=32))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=2e-4)
    assert all(group["fused"] for group in optimizer.param_groups)  # torch has a CPU fused AdamW
    decayed, plain = optimizer.param_groups
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.regularized_weights()}
    assert decayed["weight_decay"] == 2e-4 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_fused_adamw_stays_within_fp32_rounding_of_the_foreach_path():
    """The fused kernel computes the same update in another order: after 3 steps the weights
    agree to fp32 rounding as Adam's normalisation amplifies it (relative 1e-5)."""
    cfg = lf.LNLConfig.tiny(image_size=32, dropout=0.0)
    fused_model = _model(cfg)
    foreach_model = copy.deepcopy(fused_model)
    steps = [TrainStep(m, build_optimizer(m, 1e-3, 2e-4, fused=fused), precision="fp32", device="cpu")
             for m, fused in ((fused_model, True), (foreach_model, False))]
    assert not steps[1].optimizer.param_groups[0]["fused"]
    for i in range(3):
        x, y = _batch(cfg, seed=i)
        losses = [step(x, y) for step in steps]
        assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(fused_model.parameters(), foreach_model.parameters()):
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-9


# ---- warm-up ---------------------------------------------------------------------------------
def test_warm_up_leaves_weights_optimizer_and_rng_as_found():
    """The warm-up runs a real step (auto's timing, JIT, compile happen there) and then puts
    back the weights, gradients, optimizer state, lr and RNG: the step after it is the step
    that would have run without it."""
    cfg = lf.LNLConfig.tiny(image_size=32, dropout=0.5)
    warmed_model = _model(cfg)
    plain_model = copy.deepcopy(warmed_model)
    warmed = TrainStep(warmed_model, build_optimizer(warmed_model, 1e-3, 2e-4), precision="fp32", device="cpu")
    plain = TrainStep(plain_model, build_optimizer(plain_model, 1e-3, 2e-4), precision="fp32", device="cpu")
    x, y = _batch(cfg)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    seconds = warmed.warm_up(x, y)
    assert seconds > 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew inside a forked stream
    assert not warmed.optimizer.state  # the lazily made Adam state is gone again
    for p, q in zip(warmed_model.parameters(), plain_model.parameters()):
        assert p.grad is None
        assert torch.equal(p, q)
    torch.manual_seed(7)
    loss_warmed = warmed(x, y)
    torch.manual_seed(7)
    loss_plain = plain(x, y)
    assert torch.equal(loss_warmed, loss_plain)
    for p, q in zip(warmed_model.parameters(), plain_model.parameters()):
        assert torch.equal(p, q)


def test_warm_up_leaves_batchnorm_statistics_as_found():
    """A backbone with BatchNorm (the ResNet-18 stand-in): the warm-up's train-mode forwards move
    its running statistics and counts, which must be put back like the weights."""
    cfg = lf.LNLConfig.tiny(image_size=32, backbone="module:backbone_standins:resnet18_standin")
    model = _model(cfg)
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert any("running_mean" in name for name in before)
    warmed = TrainStep(model, build_optimizer(model, 1e-3, 2e-4), precision="fp32", device="cpu")
    warmed.warm_up(*_batch(cfg))
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name


# ---- the compiled step: one graph ----------------------------------------------------------------
def test_compiled_step_is_one_graph_and_trains_like_the_eager_step():
    """forward, loss, backward and AdamW in one fullgraph=True graph (a graph break would
    raise), compiled once for the whole run (the lr is a tensor: the scheduler changing it
    recompiles nothing), and numerically the eager step (fp32, no dropout)."""
    from torch._dynamo.utils import counters

    cfg = micro_config("native")
    eager_model = _model(cfg)
    compiled_model = copy.deepcopy(eager_model)
    eager = TrainStep(eager_model, build_optimizer(eager_model, 1e-3, 2e-4), precision="fp32", device="cpu")
    optimizer = build_optimizer(compiled_model, 1e-3, 2e-4, tensor_lr=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    compiled = TrainStep(compiled_model, optimizer, precision="fp32", device="cpu", compile=True)
    counters.clear()
    x, y = _batch(cfg)
    compiled.warm_up(x, y)  # the compile happens here
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
    for i in range(2):
        x, y = _batch(cfg, seed=i)
        a, b = eager(x, y), compiled(x, y)
        assert torch.allclose(a, b, rtol=1e-5), (i, a, b)
        scheduler.step()  # the compiled step must follow the new lr ...
        for group in eager.optimizer.param_groups:
            group["lr"] *= 0.5
    assert counters["stats"]["unique_graphs"] == 1  # ... without a second graph
    # Adam normalises each update to about lr, so near-zero gradients can flip a step's sign
    # under reordered rounding: compare the weights at the scale of lr.
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        assert (p - q).abs().max() <= 2e-3


# ---- no host sync in a steady-state step -----------------------------------------------------
def test_the_steady_state_step_never_waits_for_the_device(tmp_path, monkeypatch):
    """Through the trainer: 20 steps under a dispatch mode that records every op making the host
    wait for the device. Only the amortised divergence check (every
    DIVERGENCE_CHECK_EVERY steps) may sync; a step itself - batch, augmentation, forward,
    loss, backward, AdamW - never does."""
    from lnlatten_fast.training import trainer

    counter = HostSyncCounter()
    current = {"step": 0}
    by_step: dict[int, list] = {}
    real_call = TrainStep.__call__

    def counted_call(self, x, y):
        current["step"] += 1
        return real_call(self, x, y)

    class StepAttributing(HostSyncCounter):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            before = len(counter.events)
            counter.pinned = None
            out = HostSyncCounter.__torch_dispatch__(counter, func, types, args, kwargs)
            if len(counter.events) > before and 0 < current["step"] <= 20:
                by_step.setdefault(current["step"], []).append(counter.events[-1])
            return out

    monkeypatch.setattr(TrainStep, "__call__", counted_call)
    # Stop counting at the epoch's end: evaluation and checkpoints are per epoch, not per step.
    real_check = trainer._all_finite
    monkeypatch.setattr(trainer, "_all_finite", lambda model: (current.update(step=10**6), real_check(model))[1])
    settings = small_settings(tmp_path / "run", epochs=1, batch_size=4, synthetic_train=80, trace_every=0)
    with StepAttributing():
        trainer.train(settings)
    every = trainer.DIVERGENCE_CHECK_EVERY
    assert set(by_step) <= {every, 2 * every}, {k: v for k, v in by_step.items() if k % every}
    assert by_step, "the amortised check itself must be seen: the counter would miss real syncs otherwise"
    for events in by_step.values():
        assert all("host" in reason for reason, _ in events)


def test_the_sync_counter_sees_each_kind_of_wait():
    """The instrument can fail: each kind of host wait is recorded, plain device work is not."""
    t = torch.ones(3)
    with HostSyncCounter() as syncs:
        (t * 2).sum()
        t.sum().item()
        bool(t[0] > 0)
        torch.nonzero(t)
    assert [name for _, name in syncs.events] == ["aten::_local_scalar_dense"] * 2 + ["aten::nonzero"]
    with HostSyncCounter() as syncs:  # a copy to another device from pageable host memory
        t.to("meta")
    assert syncs.events == [("host-to-device copy from pageable memory", "aten::_to_copy")]
    with HostSyncCounter(pinned=lambda tensor: True) as syncs:  # pinned: asynchronous
        t.to("meta")
    assert syncs.events == []


def test_augmentation_refuses_random_numbers_from_another_device():
    """Draws made on the host and moved to the device are a pageable copy the host waits for:
    the generator must live where the batch is."""
    x = torch.zeros(2, 3, 8, 8, device="meta")
    with pytest.raises(ValueError, match="generator must be on the batch's device"):
        augment(x, torch.Generator().manual_seed(0), crop_padding=1)
    with HostSyncCounter() as syncs:
        augment(x, None, crop_padding=1)
    assert syncs.events == []


def test_cuda_graphs_need_compile_and_cuda():
    cfg = micro_config("reference")
    model = _model(cfg)
    with pytest.raises(ValueError, match="cuda_graphs needs compile"):
        TrainStep(model, build_optimizer(model, 1e-3, 0.0), precision="fp32", device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TrainStep(model, build_optimizer(model, 1e-3, 0.0), precision="fp32", device="cpu", compile=True,
                  cuda_graphs=True)
    assert step_module.fused_adamw_available(torch.device("cpu"))


def test_the_lr_kind_follows_the_step_across_a_resume():
    """A compiled run keeps its lr as a tensor (no recompile per epoch), an eager one as a float;
    a checkpoint of either resumes into the other with the same value."""
    from lnlatten_fast.training.step import current_lr, use_tensor_lr

    model = _model(micro_config("reference"))
    compiled_run = build_optimizer(model, 3e-4, 0.0, tensor_lr=True)
    assert torch.is_tensor(compiled_run.param_groups[0]["lr"])
    eager_run = build_optimizer(model, 1.0, 0.0)
    eager_run.load_state_dict(compiled_run.state_dict())
    use_tensor_lr(eager_run, False)
    assert all(isinstance(g["lr"], float) for g in eager_run.param_groups)
    assert current_lr(eager_run) == pytest.approx(3e-4)
    use_tensor_lr(eager_run, True)
    assert all(torch.is_tensor(g["lr"]) for g in eager_run.param_groups)
    assert current_lr(eager_run) == pytest.approx(3e-4)


def test_a_torch_that_cannot_trace_backward_compiles_the_forward_alone(monkeypatch):
    """Older torch (the GPU machines' 2.11, say) lacks Dynamo's trace_autograd_ops: the step
    still compiles what it can (forward and loss) and says so, instead of failing."""
    monkeypatch.setattr(step_module, "can_trace_backward", lambda: False)
    model = _model(micro_config("reference"))
    with pytest.warns(RuntimeWarning, match="cannot trace the backward"):
        train_step = TrainStep(model, build_optimizer(model, 1e-3, 0.0, tensor_lr=True), precision="fp32",
                               device="cpu", compile=True)
    assert train_step._graph_step is None and train_step.forward_model is not model


def test_a_resolved_precision_asks_the_device_nothing(monkeypatch):
    """Found on an H200: the compiled step entered autocast("bf16", cuda), which asked
    torch.cuda.is_bf16_supported() - a call Dynamo cannot put in a graph, so --compile failed
    on every GPU. The device is asked once, when the precision is resolved."""
    from lnlatten_fast.training import precision

    def asked():
        raise AssertionError("is_bf16_supported called where a compiled graph would trace it")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", asked)
    context = precision.autocast("bf16", torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert isinstance(precision.autocast("fp32", torch.device("cuda")), type(precision.autocast("fp32", "cpu")))
    with pytest.raises(ValueError, match="precision"):
        precision.autocast("fp8", torch.device("cpu"))


def test_the_warm_up_runs_every_batch_size_the_first_epoch_meets(tmp_path):
    """Found on an H200: the attention trace's first record (8 probe images) met a batch size
    the warm-up had not run, and stalled epoch 1 for about 9 s (auto's timing and the kernel JIT
    for that shape). The warm-up now runs the training, evaluation and probe batches."""
    import numpy as np

    from lnlatten_fast.data.cache import ImageSet
    from lnlatten_fast.training import distributed, trainer
    from lnlatten_fast.training.trace import AttentionTrace

    cfg = micro_config("reference")
    model = _model(cfg)
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 255, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 7)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    settings = small_settings(tmp_path / "run", batch_size=16, model=cfg, trace_images=7)
    settings.validate()
    ctx = distributed.Context(device=torch.device("cpu"))
    trace = AttentionTrace(tmp_path, images, settings.trace_every, settings.trace_images, ctx.device, 0)
    train_step = TrainStep(model, build_optimizer(model, 1e-3, 0.0), precision="fp32", device="cpu")
    trainer._warm_up(train_step, model, images, images, settings, "fp32", 2, ctx, trace)
    assert {16, len(trace.indices)} <= set(seen) and len(trace.indices) == 7
