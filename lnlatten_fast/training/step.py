"""One training step: what the trainer runs, the benchmarks time, the profiler counts and
bench/gpu_check.sh measures.

    optimizer = build_optimizer(model, lr=3e-4, weight_decay=2e-4)
    step = TrainStep(model, optimizer, precision="bf16", device=device, compile=True)
    step.warm_up(x, y)     # auto's timing, the Triton JIT, compile (and capture): weights untouched
    loss = step(x, y)      # forward, eq. 3 loss, backward, AdamW; the loss stays on the device

A step never waits for the device: the loss is returned as a tensor, and the caller checks it
for NaN/inf every few steps (the trainer's amortised divergence check).

Compiled (`compile=True`), forward, loss, backward and the AdamW update are one
`torch.compile(fullgraph=True)` graph: the backward is traced by Dynamo and the update calls
torch's functional AdamW under no_grad, so Optimizer.step's deliberate graph breaks are not
in the way. The optimizer object still owns the state (its state_dict is what last.pt holds),
and the state is created before tracing so the graph has static shapes and no allocations
that depend on the first call. With `cuda_graphs=True` the compiled graph is captured and
replayed (inductor's CUDA graph trees): the launch cost of every kernel is paid once.
"""

from __future__ import annotations

import time
import warnings

import torch

from ..model import lnl_loss
from ..nn import regularized_weights
from .precision import autocast, resolve_precision
from .recipes import clip_gradients

__all__ = ["build_optimizer", "TrainStep", "fused_adamw_available", "current_lr", "use_tensor_lr", "init_optimizer_state"]


def fused_adamw_available(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel for parameters on `device`."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return torch.device(device).type in _get_fused_kernels_supported_devices()


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, *, fused: bool | None = None,
                    tensor_lr: bool = False) -> torch.optim.AdamW:
    """AdamW with two parameter groups: the conv and linear weights that eq. 3's L2 term covers
    get `weight_decay` (decoupled: W <- W - lr·wd·W), everything else (biases) none.

    `fused`: None uses torch's fused kernel wherever it has one for the parameters' device (one
    launch per step instead of the foreach path's chunks, and no fp32 temporaries in memory).
    `tensor_lr`: the learning rate as a 0-d tensor, so a compiled step reads the scheduler's
    new value each epoch instead of recompiling for it.
    """
    weights = regularized_weights(model)
    ids = {id(p) for p in weights}
    others = [p for p in model.parameters() if id(p) not in ids]
    device = next(model.parameters()).device
    if fused is None:
        fused = fused_adamw_available(device)
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    # On the parameters' device: a host scalar in the compiled graph's inputs would keep the
    # graph from being captured in a CUDA graph.
    return torch.optim.AdamW(groups, lr=torch.tensor(lr, dtype=torch.float32, device=device) if tensor_lr else lr,
                             fused=fused or None, foreach=None if fused else True)


def use_tensor_lr(optimizer: torch.optim.Optimizer, tensor: bool) -> None:
    """Each group's lr as a 0-d tensor on the parameters' device (`tensor`) or a float, keeping
    its value: a loaded state_dict brings the kind (and, for a tensor, the host) the saved run
    used."""
    for group in optimizer.param_groups:
        lr, device = group["lr"], group["params"][0].device
        if tensor and not torch.is_tensor(lr):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        elif tensor and lr.device != device:  # a checkpoint loads it on the host
            group["lr"] = lr.to(device)
        elif not tensor and torch.is_tensor(lr):
            group["lr"] = float(lr.item())


def can_trace_backward() -> bool:
    """Whether this torch's Dynamo can trace Tensor.backward into a graph (the switch
    `trace_autograd_ops`), which the one-graph compiled step needs."""
    return hasattr(torch._dynamo.config, "trace_autograd_ops")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if torch.is_tensor(lr) else lr)


def init_optimizer_state(optimizer: torch.optim.AdamW) -> None:
    """Create AdamW's per-parameter state now (zeros, as its lazy init would on the first
    step), so a compiled step sees every state tensor from its first trace."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            on_device = group["fused"] or group["capturable"]
            # AdamW's own choice (its _init_group): `step` lives with the parameter only for the
            # fused and capturable paths; the foreach path keeps it on the host.
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _functional_adamw(optimizer: torch.optim.AdamW) -> None:
    """AdamW.step's arithmetic through torch's functional adam (decoupled weight decay), for the
    compiled step: Optimizer.step breaks Dynamo's graph on purpose (see torch.optim.optimizer)."""
    from torch.optim.adam import adam

    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        state = [optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam(
            params, [p.grad for p in params], [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state], [],
            [s["step"] for s in state], foreach=True, capturable=True,
            differentiable=False, fused=False, decoupled_weight_decay=True, amsgrad=False,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False,
        )


class TrainStep:
    """Forward under the run's precision, eq. 3's loss on fp32 logits, backward, AdamW.

    `model` is the LNLAttenNet (its regularised weights and config); `forward_model` what runs
    the forward (a DistributedDataParallel wrapper under torchrun; default `model`).
    `loss_l2`: λ of the L2 term added to the loss (0 with the decoupled weight decay).
    `loss_fn(logits, target, model, l2_lambda=...)`: eq. 3 (`lnl_loss`) unless given.
    `clip_grad_norm`: > 0 scales the gradients to that global norm at most before the update.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, precision: str,
                 device: torch.device, loss_l2: float = 0.0, compile: bool = False, cuda_graphs: bool = False,
                 forward_model: torch.nn.Module | None = None, loss_fn=lnl_loss, clip_grad_norm: float = 0.0):
        self.model, self.optimizer = model, optimizer
        self.clip_grad_norm = clip_grad_norm
        self.loss_fn = loss_fn
        self.device = torch.device(device)
        # Resolved once, here: resolving asks the device (torch.cuda.is_bf16_supported on CUDA),
        # which a compiled graph cannot trace; autocast("bf16"|"fp32") asks nothing.
        self.precision = resolve_precision(precision, self.device)
        self.loss_l2 = loss_l2
        self.forward_model = model if forward_model is None else forward_model
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        if cuda_graphs and not compile:
            raise ValueError("cuda_graphs needs compile: the captured graph is the compiled step's")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got {self.device}")
        self._graph_step = None
        if compile:
            if self.forward_model is not model:
                raise ValueError("compile=True compiles the whole step, which a DDP wrapper's hooks break; "
                                 "compile the forward model instead")
            init_optimizer_state(optimizer)
            if cuda_graphs:
                for state in optimizer.state.values():  # the replayed graph reads them in place
                    for value in state.values():
                        if torch.is_tensor(value) and value.device.type == "cuda":
                            torch._dynamo.mark_static_address(value)
            mode = "reduce-overhead" if cuda_graphs else None
            if can_trace_backward():
                self._graph_step = torch.compile(self._compiled_body, fullgraph=True, mode=mode)
            else:  # an older torch: the forward and loss compiled, backward and AdamW eager
                warnings.warn(f"torch {torch.__version__} cannot trace the backward into the compiled graph "
                              "(torch._dynamo.config.trace_autograd_ops is missing): forward and loss are compiled, "
                              "backward and AdamW run eagerly", RuntimeWarning, stacklevel=2)
                self.forward_model = torch.compile(model, fullgraph=True, mode=mode)
                self.compiled = False

    # ---- eager ------------------------------------------------------------------------------
    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits = self.forward_model(x).logits
        loss = self.loss_fn(logits.float(), y, self.model, l2_lambda=self.loss_l2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._clip()
        self.optimizer.step()
        return loss.detach()

    # ---- compiled: one graph --------------------------------------------------------------------
    def _compiled_body(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits = self.model(x).logits
        loss = self.loss_fn(logits.float(), y, self.model, l2_lambda=self.loss_l2)
        loss.backward()
        self._clip()
        with torch.no_grad():
            _functional_adamw(self.optimizer)
        # Dead once the update has read them: cleared inside the graph, the gradients are no
        # graph outputs (no bytes written for them, no replayed-graph memory handed out), and
        # every call starts from the same state, so the graph's guards never change.
        for p in self.model.parameters():
            p.grad = None
        return loss.detach()

    def _clip(self) -> None:
        if self.clip_grad_norm > 0:
            with torch.no_grad():
                clip_gradients(self.model.parameters(), self.clip_grad_norm)

    def _run_compiled(self, x, y):
        # Dynamo traces Tensor.backward only with this switch; it is read while tracing.
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            loss = self._graph_step(x, y)
        if self.cuda_graphs:
            # Graph-tree outputs live in the graph's pool and are overwritten by the next replay.
            loss = loss.clone()
        return loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step; returns the loss (0-d fp32 tensor on the device, no host sync)."""
        if self._graph_step is not None:
            return self._run_compiled(x, y)
        return self._eager(x, y)

    # ---- warm-up ------------------------------------------------------------------------------
    def warm_up(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> float:
        """Run the step on (x, y) and put everything back: weights, buffers (BatchNorm's running
        statistics and counts), gradients, optimizer state, learning rate and every RNG stream
        are as they were. What stays is what the first steps
        would otherwise pay inside the first epoch: `auto`'s conv timing, the Triton JIT,
        torch.compile, cuDNN's algorithm search and the CUDA-graph capture. Returns the seconds
        it took (the device waited for)."""
        start = time.perf_counter()
        steps = steps if steps is not None else (3 if self.cuda_graphs else 1)  # graph trees record, then capture
        params = [p.detach().clone() for p in self.model.parameters()]
        buffers = [b.clone() for b in self.model.buffers()]
        state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in self.optimizer.state.items()}
        lrs = [g["lr"].clone() if torch.is_tensor(g["lr"]) else g["lr"] for g in self.optimizer.param_groups]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self._graph_step is not None or self.forward_model is not self.model:  # something compiles
                self._measure_conv_choices(x)
            for _ in range(steps):
                self(x, y)
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params):
                p.copy_(saved)
                p.grad = None
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
            for p, saved in state.items():
                for k, v in saved.items():
                    if torch.is_tensor(v):
                        self.optimizer.state[p][k].copy_(v)
            for p in list(self.optimizer.state):
                if p not in state:  # lazily created by the eager step: back to "no state yet"
                    del self.optimizer.state[p]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                if torch.is_tensor(lr):
                    group["lr"].copy_(lr)
                else:
                    group["lr"] = lr
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _measure_conv_choices(self, x: torch.Tensor) -> None:
        """An eager forward + backward at the step's shape: `auto` times its conv candidates in
        eager calls only, so this settles them before a compiled graph is traced."""
        with autocast(self.precision, self.device):
            logits = self.model(x).logits
        logits.float().sum().backward()
        self.model.zero_grad(set_to_none=True)
