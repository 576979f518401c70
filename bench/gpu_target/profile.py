"""The whole-step profiler's trace: the training step the trainer runs, on meta tensors standing
in for the GPU, counted op by op (counting.py), with the Triton ops' real host wrappers launching
through the stand-in driver (driver.py, tracing.py).

What runs is the package's own code: `lnlatten_fast.data.pipeline.device_batch` (the host batch
gathered and pinned by `BatchLoader`'s own `_host_batch`), `training.step.build_optimizer` and
`training.step.TrainStep` (forward under the run's precision, eq. 3's loss, backward, AdamW),
`training.evaluation.evaluate` and `training.trace.AttentionTrace.maybe_record`. Where that API
is missing (a checkout from before it), `legacy_*` below runs the trainer loop's body as it was.

The meta device stands for CUDA (`meta_as_cuda`; each patch is listed in step.json):
* autocast: emulated (autocast.py), since torch has none for meta;
* the optimizer: torch picks foreach/fused kernels only for devices it lists (cuda, ...): meta
  is added to those lists, so AdamW takes the path it takes on CUDA (fused, where
  build_optimizer asks for it);
* pinned memory: BatchLoader pins host batches when its device is CUDA; its `_host_batch` is
  called as for CUDA, and `Tensor.pin_memory` marks instead of pinning (counting.py);
* the Triton backend is usable on meta, with the target's SM count (tracing.patched).

The step is run twice and the second one is counted (the first creates AdamW's state); the
evaluation is traced over one and over two batches (per batch = the difference).
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from pathlib import Path

PHASES = ("data", "forward", "loss", "backward", "optimizer")


# ---- the meta device standing for CUDA --------------------------------------------------------------
@contextlib.contextmanager
def meta_as_cuda(counter):
    """The patches that make the meta step take CUDA's paths (see the module docstring)."""
    import torch
    import torch.optim.adam as adam_module
    import torch.optim.optimizer as optimizer_module
    import torch.utils._foreach_utils as foreach_utils

    from lnlatten_fast.data import pipeline
    from lnlatten_fast.training import evaluation, trace  # noqa: F401  (imported before autocast is patched)

    from .autocast import follow_emulation, precision_autocast_emulated
    from .counting import nonzero_assumes_all_true, pin_memory_marks

    step_api()  # the step's modules imported, so that their `autocast` is patched below
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    for module in (foreach_utils, optimizer_module):
        for name in ("_get_fused_kernels_supported_devices", "_get_foreach_kernels_supported_devices"):
            original = getattr(foreach_utils, name)
            patch(module, name, lambda original=original: [*original(), "meta"])
    capturable = adam_module._get_capturable_supported_devices
    patch(adam_module, "_get_capturable_supported_devices",
          lambda supports_xla=True: [*capturable(supports_xla), "meta"])

    host_batch = pipeline.BatchLoader._host_batch

    def host_batch_as_on_cuda(self, chunk):
        # The loader decides to pin from its device: on meta, ask it as the CUDA loader.
        if self.device.type != "meta":
            return host_batch(self, chunk)
        device, self.device = self.device, torch.device("cuda")
        try:
            return host_batch(self, chunk)
        finally:
            self.device = device

    patch(pipeline.BatchLoader, "_host_batch", host_batch_as_on_cuda)
    with pin_memory_marks(counter), nonzero_assumes_all_true(), follow_emulation(), \
            precision_autocast_emulated("meta") as autocast_modules:
        try:
            yield [
                "torch.optim: meta added to the devices with foreach, fused and capturable kernels "
                "(AdamW takes its CUDA path)",
                "BatchLoader._host_batch on meta pins as on CUDA; Tensor.pin_memory marks the host tensor",
                "torch.fx.experimental._config.meta_nonzero_assume_all_nonzero (boolean masks all true on meta)",
                "lnlatten_fast.ops._follow_autocast follows the emulated autocast",
                "autocast(precision, device) -> the emulated CUDA autocast on meta, in " + ", ".join(autocast_modules),
            ]
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)


# ---- the package's step, or the loop body from before it ------------------------------------------------
def step_api():
    """(device_batch, build_optimizer, TrainStep, which): the package's, or the legacy stand-ins."""
    try:
        from lnlatten_fast.data.pipeline import device_batch
    except ImportError:
        device_batch = legacy_device_batch
    try:
        from lnlatten_fast.training.step import TrainStep, build_optimizer
    except ImportError:
        return device_batch, legacy_build_optimizer, LegacyTrainStep, "legacy (trainer loop body)"
    which = "lnlatten_fast.training.step.TrainStep"
    if device_batch is legacy_device_batch:
        which += ", legacy pipeline"
    return device_batch, build_optimizer, TrainStep, which


def legacy_device_batch(x_u8, y, device, *, augment_batch=False, generator=None, crop_padding=0):
    """BatchLoader.__iter__'s body before device_batch existed: the augmentation drawn on a CPU
    generator and moved to the device."""
    import torch

    from lnlatten_fast.data.pipeline import augment, to_model_input

    x = to_model_input(x_u8.to(device, non_blocking=True))
    if augment_batch:
        x = augment(x, torch.Generator().manual_seed(0) if generator is None else generator, crop_padding)
    return x, y.to(device, non_blocking=True)


def legacy_build_optimizer(model, lr, weight_decay, fused=None):
    import torch

    weights = model.regularized_weights()
    ids = {id(p) for p in weights}
    others = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


class LegacyTrainStep:
    """The trainer loop's body before TrainStep existed."""

    def __init__(self, model, optimizer, *, precision, device, loss_l2=0.0, compile=False):
        import torch

        self.model, self.optimizer, self.precision, self.device, self.loss_l2 = model, optimizer, precision, device, loss_l2
        self.forward_model = torch.compile(model, fullgraph=True) if compile else model

    def __call__(self, x, y):
        from lnlatten_fast.model import lnl_loss
        from lnlatten_fast.training.precision import autocast

        with autocast(self.precision, self.device):
            logits = self.forward_model(x).logits
        loss = lnl_loss(logits.float(), y, self.model, l2_lambda=self.loss_l2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def call_device_batch(device_batch, x_u8, y, device, crop_padding):
    """device_batch with augmentation on, by whichever keyword this version names it."""
    params = inspect.signature(device_batch).parameters
    flag = "augment_batch" if "augment_batch" in params else "augment"
    return device_batch(x_u8, y, device, **{flag: True}, generator=None, crop_padding=crop_padding)


# ---- building ---------------------------------------------------------------------------------------------
def build(cfg, precision: str, lr: float, weight_decay: float, compile: bool = False, device="meta"):
    """(model, optimizer, step, which): the LNLAttenNet in fp32 master weights, channels-last, on
    `device`, its AdamW and its TrainStep, as the trainer builds them."""
    import torch

    import lnlatten_fast as lf

    _, build_optimizer, train_step_cls, which = step_api()
    with torch.device(device):
        model = lf.LNLAttenNet(cfg)
    model = model.channels_last().train()
    kwargs = {}
    if compile and "tensor_lr" in inspect.signature(build_optimizer).parameters:
        kwargs["tensor_lr"] = True  # the trainer's choice for a compiled run
    optimizer = build_optimizer(model, lr, weight_decay, **kwargs)
    step = train_step_cls(model, optimizer, precision=precision, device=torch.device(device), loss_l2=0.0,
                          compile=compile)
    return model, optimizer, step, which


def host_batch(cfg, batch: int, device="meta"):
    """A uint8 host batch (B, H, W, 3) and its labels, gathered (and pinned) by BatchLoader's own
    `_host_batch` for a loader on `device`."""
    import numpy as np
    import torch

    from lnlatten_fast.data.pipeline import BatchLoader

    size = cfg.image_size
    images = np.zeros((batch, size, size, 3), dtype=np.uint8)
    labels = np.zeros(batch, dtype=np.int64)
    loader = BatchLoader(images, labels, np.arange(batch), batch, torch.device(device))
    if hasattr(loader, "_host_batch"):
        return loader._host_batch(np.arange(batch))
    return torch.from_numpy(images), torch.from_numpy(labels)


@contextlib.contextmanager
def phase_hooks(counter, model, optimizer):
    """counter.phase follows the step: forward inside the model's forward, loss after it, the
    optimizer inside optimizer.step (the backward names itself: counting.StepCounter)."""
    handles = [
        model.register_forward_pre_hook(lambda *a: setattr(counter, "phase", "forward")),
        model.register_forward_hook(lambda *a: setattr(counter, "phase", "loss")),
    ]
    if hasattr(optimizer, "register_step_pre_hook"):
        handles.append(optimizer.register_step_pre_hook(lambda *a: setattr(counter, "phase", "optimizer")))
        handles.append(optimizer.register_step_post_hook(lambda *a: setattr(counter, "phase", "after step")))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def make_triton_hook(tracker, layers):
    """The counter's handler of lnlatten_fast's Triton ops: the real host wrapper under the
    stand-in driver (tracing.run_host_wrapper), one record per Triton launch it made, and its
    own aten ops counted by a child counter."""
    from .counting import _tensors, dtype_name, footprint
    from .tracing import run_host_wrapper

    def on_triton_op(counter, func, args, kwargs):
        qualname = func._schema.name
        first = len(tracker.launches)
        with counter.child(qualname):
            out = run_host_wrapper(tracker, func, args, kwargs, layers)
        inputs = [t for t in _tensors(args) if counter.on_device(t)]
        outputs = [t for t in _tensors(out) if counter.on_device(t)]
        written = sum(map(footprint, outputs))
        for launch in tracker.launches[first:]:
            plan = launch.get("plan")
            if plan is not None:
                flops, total = plan["flops"], plan["bytes"]
            else:
                flops, total = attention_flops(qualname, args), sum(map(footprint, inputs)) + written
            counter.add(qualname, part=launch["name"], launches=1, flops=flops, read=max(0, total - written),
                        written=min(written, total), kind="triton", dtype=dtype_name(inputs[0].dtype),
                        launch_index=launch["index"], layer=launch["layer"], planned=plan is not None)
        return out

    return on_triton_op


def attention_flops(qualname: str, args) -> int:
    """The L1 attention's GEMM FLOPs from its (B, M, D) inputs: forward QKᵀ and RV, 4·B·M²·D;
    backward recomputes QKᵀ and forms dR, dV, dQ, dK, 10·B·M²·D. Other unplanned launches: 0."""
    if "l1_attention" not in qualname:
        return 0
    q = args[0]
    batch, m, d = q.shape[-3:] if q.dim() >= 3 else (1, *q.shape)
    return (10 if qualname.endswith("_backward") else 4) * batch * m * m * d


# ---- the traces ---------------------------------------------------------------------------------------------
def trace_eager(cfg, batch: int, precision: str, lr: float, weight_decay: float, crop: int, tracker, layers,
                dataset_test: int, trace_images: int) -> dict:
    """Everything the profile counts, on meta: two training steps (the second is the steady
    state), evaluation over one and two batches, one attention-trace record. Returns the
    records of each and what the build used."""
    import numpy as np
    import torch

    from lnlatten_fast.data.cache import ImageSet
    from lnlatten_fast.training import distributed
    from lnlatten_fast.training.evaluation import evaluate
    from lnlatten_fast.training.trace import AttentionTrace

    from .counting import StepCounter

    counter = StepCounter("meta", on_triton_op=make_triton_hook(tracker, layers))
    device = torch.device("meta")
    result = {}
    with meta_as_cuda(counter) as patches:
        device_batch, _, _, _ = step_api()
        model, optimizer, train_step, which = build(cfg, precision, lr, weight_decay)
        result.update(patches=patches, step_api=which, optimizer=_optimizer_kind(optimizer))
        x_u8, y_host = host_batch(cfg, batch)

        def one_step():
            counter.phase = "data"
            with counter:
                x, y = call_device_batch(device_batch, x_u8, y_host, device, crop)
                with phase_hooks(counter, model, optimizer):
                    train_step(x, y)

        for name in ("first_step", "step"):
            start = len(counter.records)
            one_step()
            result[name] = counter.records[start:]

        size = cfg.image_size
        ctx = distributed.Context(device=device)
        for batches in (1, 2):
            images = ImageSet(np.zeros((batches * batch, size, size, 3), np.uint8), np.zeros(batches * batch, np.int64))
            start = len(counter.records)
            counter.phase = "evaluation"
            with counter:
                evaluate(model, images, batch, ctx, precision)
            result[f"eval_{batches}"] = counter.records[start:]
        model.train()

        probes = ImageSet(np.zeros((max(trace_images, 1), size, size, 3), np.uint8),
                          np.arange(max(trace_images, 1), dtype=np.int64) % 7)
        with tempfile.TemporaryDirectory() as tmp:
            trace = AttentionTrace(Path(tmp), probes, 1, trace_images, device, 0)
            start = len(counter.records)
            counter.phase = "trace"
            with counter:
                trace.maybe_record(model, 1, 1, 1, precision, device)
            result["trace_record"] = counter.records[start:]

        result["checkpoint"] = checkpoint_bytes(model, optimizer)
        result["parameters"] = sum(p.numel() for p in model.parameters())
    return result


def _optimizer_kind(optimizer) -> str:
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "AdamW, fused"
    return "AdamW, foreach" if group.get("foreach") in (True, None) else "AdamW, for-loop"


def checkpoint_bytes(model, optimizer) -> dict:
    """Tensor bytes of the checkpoints an epoch writes: best.pt (the model's state_dict) and
    last.pt (the model's, the optimizer's state: AdamW's exp_avg, exp_avg_sq, step)."""
    from .counting import _tensors

    def size(tree):
        return sum(t.numel() * t.element_size() for t in _tensors(tree))

    model_bytes = size(dict(model.state_dict()))
    optimizer_bytes = size(optimizer.state_dict()["state"])
    return {"best": model_bytes, "last": model_bytes + optimizer_bytes, "model": model_bytes,
            "optimizer_state": optimizer_bytes}
