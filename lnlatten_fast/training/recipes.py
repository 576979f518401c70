"""The training recipes FER practice adds to the paper's protocol, each off by default.

- Class-balanced sampling (`BalancedSampler`): an epoch draws as many samples as the training
  set holds, with replacement, each with weight 1/n_c ("inverse": every class equally often) or
  1/sqrt(n_c) ("sqrt": class c in proportion to sqrt(n_c)), and shards them across ranks as
  DistributedSampler does. The draw is a function of (seed, epoch) alone, so a resumed epoch
  sees the same order and the loader's saved position applies unchanged.
- Label smoothing and mixed targets (`recipe_loss`): cross-entropy against a probability target,
  plus eq. 3's L2 term as `lnl_loss` adds it.
- Mixup / cutmix (`BatchMixer`): one Beta(α, α) draw and one permutation per step, from a
  generator seeded by (seed, epoch, step): nothing to save for an exact resume. The target is
  the convex combination of the two one-hot labels, so the loss is the same combination of the
  two cross-entropies (cross-entropy is linear in its target). The two are exclusive.
- EMA of the weights (`WeightAverage`): a copy of the model whose floating parameters and
  buffers follow e <- d·e + (1 - d)·w after every optimizer step (buffers too, so a backbone's
  BatchNorm statistics match the averaged weights; integer buffers are copied). It is updated
  outside the step, compiled or not, with torch._foreach ops.
- The schedule (`build_scheduler`): "paper", x lr_decay per epoch; "cosine", per epoch: a
  linear warm-up over `warmup_epochs` epochs (epoch e < W trains at lr·(e + 1)/W), then
  lr·(1 + cos(π·(e - W)/(E - W)))/2 for the remaining epochs e = W .. E - 1. Per epoch, as the
  paper's own schedule is, so a checkpoint's scheduler state stays an epoch count.
- Gradient clipping (`clip_gradients`): the global L2 norm over all gradients scaled down to
  at most `max_norm`, before the optimizer step; traceable by torch.compile.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model import l2_penalty

__all__ = [
    "BALANCED_SAMPLING", "SCHEDULES", "sample_weights", "BalancedSampler", "recipe_loss", "BatchMixer",
    "WeightAverage", "build_scheduler", "cosine_lr_factor", "clip_gradients",
]

BALANCED_SAMPLING = ("none", "inverse", "sqrt")
SCHEDULES = ("paper", "cosine")


# ---- class-balanced sampling ----------------------------------------------------------------------
def sample_weights(labels: np.ndarray, mode: str) -> torch.Tensor:
    """Each sample's drawing weight: 1/n_c ("inverse") or 1/sqrt(n_c) ("sqrt") for its class c."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels).astype(np.float64)
    if mode == "inverse":
        per_class = 1.0 / np.maximum(counts, 1)
    elif mode == "sqrt":
        per_class = 1.0 / np.sqrt(np.maximum(counts, 1))
    else:
        raise ValueError(f"mode must be inverse or sqrt, got {mode!r}")
    return torch.from_numpy(per_class[labels])


class BalancedSampler:
    """DistributedSampler's interface (`set_epoch`, iteration, `len`) over class-balanced draws:
    each epoch draws ceil(n / world)·world indices with replacement (weights `sample_weights`)
    from a generator seeded by (seed, epoch); rank r takes draws r, r + world, ..."""

    def __init__(self, labels: np.ndarray, mode: str, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.weights = sample_weights(labels, mode)
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.per_rank = -(-len(self.weights) // world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())


# ---- loss with a probability target -------------------------------------------------------------------
def recipe_loss(label_smoothing: float):
    """A loss with `lnl_loss`'s signature whose target is class indices or class probabilities
    (mixup, cutmix), smoothed by `label_smoothing`: cross-entropy + λ·Σ‖W‖²."""

    def loss(logits: torch.Tensor, target: torch.Tensor, model: torch.nn.Module, l2_lambda: float | None = None):
        l2_lambda = model.config.l2_lambda if l2_lambda is None else l2_lambda
        value = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        if l2_lambda:
            value = value + l2_lambda * l2_penalty(model)
        return value

    return loss


# ---- mixup / cutmix ------------------------------------------------------------------------------------
class BatchMixer:
    """Mixes a batch with a permutation of itself: mixup (x' = λx + (1 - λ)x[perm]) or cutmix
    (a box of area 1 - λ pasted from x[perm]; λ then the uncovered fraction). Returns the mixed
    images and the target λ·onehot(y) + (1 - λ)·onehot(y[perm])."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int, seed: int):
        if mixup and cutmix:
            raise ValueError("mixup and cutmix are exclusive")
        self.kind = "mixup" if mixup else "cutmix"
        self.alpha = mixup or cutmix
        self.num_classes, self.seed = num_classes, seed

    def draw(self, batch: int, epoch: int, step: int) -> tuple[float, np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([self.seed, epoch, step])
        return float(rng.beta(self.alpha, self.alpha)), rng.permutation(batch), rng

    def targets(self, y: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(y, self.num_classes).float()
        return lam * one_hot + (1.0 - lam) * one_hot[perm]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm_np, rng = self.draw(len(y), epoch, step)
        perm = torch.from_numpy(perm_np)
        if x.device.type == "cuda":  # pinned, so the copy does not make the host wait for the device
            perm = perm.pin_memory()
        perm = perm.to(x.device, non_blocking=True)
        if self.kind == "mixup":
            mixed = x * lam + x[perm] * (1.0 - lam)
        else:
            height, width = x.shape[-2:]
            cut_h, cut_w = int(height * math.sqrt(1.0 - lam)), int(width * math.sqrt(1.0 - lam))
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            mixed = x.clone()
            mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mixed, self.targets(y, lam, perm)


# ---- EMA of the weights ------------------------------------------------------------------------------
class WeightAverage:
    """`module`: a frozen copy of `model` holding the exponential moving average of its floating
    parameters and buffers (decay `decay`), updated by `update(model)` after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    @staticmethod
    def _pairs(module: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tensors = [p.detach() for p in module.parameters()] + list(module.buffers())
        return [t for t in tensors if t.is_floating_point()], [t for t in tensors if not t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged, counters = self._pairs(self.module)
        current, current_counters = self._pairs(model)
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)  # e + (1 - d)(w - e) = d·e + (1 - d)·w
        for mine, theirs in zip(counters, current_counters):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


# ---- schedule ------------------------------------------------------------------------------------------
def cosine_lr_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """The cosine schedule's multiple of the base lr for 0-based `epoch` (see the module doc)."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = max(epochs - warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup_epochs, span) / span))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, *, lr_decay: float, epochs: int,
                    warmup_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch scheduler: "paper" (ExponentialLR, x lr_decay) or "cosine" with warm-up."""
    if schedule == "paper":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: cosine_lr_factor(epoch, epochs, warmup_epochs))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


# ---- gradient clipping -----------------------------------------------------------------------------------
def clip_gradients(parameters, max_norm: float) -> torch.Tensor:
    """Scale every gradient by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the global L2 norm over all of
    them (clip_grad_norm_'s rule, written with foreach ops a fullgraph compile traces); returns ‖g‖."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total
