"""The paper's protocol (SPEC §5) as one short loop.

Adam (lr 3e-4, x0.95 per epoch), eq. 3 loss, horizontal flip + random crop, 24 epochs, test
accuracy every epoch, and the paper's number: the mean of the last 10 epochs' test accuracy (of
all of them in a run of fewer epochs).
CK+ (and any dataset run with `folds` = K) is trained K times on subject-independent folds and
reported as mean ± std. Under torchrun the batch is split across processes with DDP.

A single-process run stops cleanly on SIGTERM, SIGUSR1 (a scheduler's warning) and SIGINT: the
current step finishes, last.pt is written with where the epoch stood (`StopSignals`), and
`TrainingInterrupted` says what was saved; `resume` continues from that step exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from .. import backbones, figures, jsonio
from ..data import labels
from ..data.cache import ImageSet
from ..data.pipeline import BatchLoader
from ..errors import ParameterError, PathExistsError, TrainingDivergedError
from ..model import LNLAttenNet, lnl_loss
from ..ops.dispatch import resolve_name
from . import checkpoint, distributed, localization, memory, metrics, recipes, run_dir as runs, tensorboard
from .evaluation import evaluate
from .loading import dataset_summary, load_run_splits, load_test_regions
from .precision import autocast, resolve_precision
from .progress import CacheProgress, Progress
from .step import TrainStep, build_optimizer, current_lr, use_tensor_lr
from .settings import TrainSettings
from .telemetry import GpuMonitor
from .trace import AttentionTrace

__all__ = [
    "LAST_EPOCHS_AVERAGED", "TrainSettings", "TrainingInterrupted", "StopSignals", "fit", "train", "summarize",
    "summary_text",
]

LAST_EPOCHS_AVERAGED = 10  # the paper reports the mean of the last 10 epochs
# The loss is checked for NaN/inf every this many steps: each check waits for the device, and
# a diverged step only has to be caught before anything is saved.
DIVERGENCE_CHECK_EVERY = 10


def train_sampler(settings: TrainSettings, labels: np.ndarray, ctx: distributed.Context):
    """This rank's share of each epoch's training order (`set_epoch(e)`, then iterate): a
    shuffle of every image once, or class-balanced draws (`balanced_sampling`)."""
    if settings.balanced_sampling != "none":
        return recipes.BalancedSampler(labels, settings.balanced_sampling, ctx.world_size, ctx.rank, settings.seed)
    return DistributedSampler(range(len(labels)), ctx.world_size, ctx.rank, shuffle=True, seed=settings.seed)


def _diverged(run_dir: Path, epoch: int, step: int, loss: float, lr: float, saved_epochs: int) -> TrainingDivergedError:
    last = run_dir / "last.pt"
    if saved_epochs and last.exists():
        good = f"the last good checkpoint is {last} (epoch {saved_epochs}); best.pt is untouched"
    else:
        good = "no checkpoint was saved"
    return TrainingDivergedError(
        f"training diverged at epoch {epoch}, step {step}: loss {loss} at lr {lr:g}; nothing non-finite "
        f"was saved, {good}. Try a lower lr, or precision fp32"
    )


def _check_losses(window: list, first_step: int, epoch: int, lr: float, run_dir: Path, saved_epochs: int) -> None:
    """Raise at the first non-finite loss among the last steps' (one wait for the device)."""
    if not window:
        return
    values = torch.stack(window).tolist()
    window.clear()
    for i, value in enumerate(values):
        if not np.isfinite(value):
            raise _diverged(run_dir, epoch, first_step + i, value, lr, saved_epochs)


def _all_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


# ---- stop signals ----------------------------------------------------------------------------
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


class TrainingInterrupted(BaseException):
    """A stop signal ended the run once what it had done was saved. str(error) says what was
    saved; `exit_status` is the conventional 128 + the signal's number; `run_dir` is the run
    that `resume` continues. A BaseException, as KeyboardInterrupt is: raised from a handler
    at any point outside the loop, it must not be taken for that point's own failure by an
    `except Exception`."""

    def __init__(self, signum: int, message: str, run_dir: Path):
        super().__init__(message)
        self.signum, self.run_dir = signum, run_dir
        self.exit_status = 128 + signum


class StopSignals:
    """SIGTERM, SIGUSR1 and SIGINT as a request the training loop answers at its next safe
    point: after the current step (a mid-epoch last.pt), or after an epoch's checkpoint. The
    handler only records the signal there (`deferred()`); elsewhere nothing in progress could
    be saved, so it raises TrainingInterrupted at once. Used as a context manager it installs
    the handlers and restores the previous ones on exit; a StopSignals never entered just
    never receives anything."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.received: int | None = None
        self._deferring = False
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        if not self._deferring:
            raise self.interrupted("no training step was in progress, so nothing unsaved was lost")

    @contextlib.contextmanager
    def deferred(self):
        """While inside, a signal is only recorded in `received` for the loop to answer."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def interrupted(self, what: str) -> TrainingInterrupted:
        return TrainingInterrupted(self.received, f"stopped by {signal.Signals(self.received).name}: {what}",
                                   self.run_dir)


# ---- one training run ----------------------------------------------------------------------
@contextlib.contextmanager
def _cudnn_autotuning(settings: TrainSettings, device: torch.device):
    """cudnn.benchmark for the fixed training shapes (its search happens in the warm-up), or
    cuDNN's deterministic algorithms under `deterministic`; torch's flags restored after."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
        torch.backends.cudnn.deterministic = settings.deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def fit(
    settings: TrainSettings,
    train_set: ImageSet,
    test_set: ImageSet,
    run_dir: Path,
    ctx: distributed.Context,
    val_set: ImageSet | None = None,
    fold: int | None = None,
    stop: StopSignals | None = None,
) -> dict:
    """Train one model; write metrics and checkpoints to `run_dir`; return its summary.
    `stop`: the signals that end it early (TrainingInterrupted, once last.pt says where it stood)."""
    stop = stop if stop is not None else StopSignals(run_dir)
    cfg = settings.model
    torch.manual_seed(settings.seed)
    last_path = run_dir / "last.pt"
    resuming = settings.resume and last_path.exists()
    # A resumed run's weights, the backbone's included, come from last.pt: the weights file it
    # started from may be gone.
    model = LNLAttenNet(cfg, load_backbone_weights=not resuming).to(ctx.device).channels_last()
    if model.backbone_weights_report and ctx.is_main:
        print(model.backbone_weights_report, flush=True)
    backend_used = resolve_name(cfg.backend, ctx.device)
    # "decoupled" (default): eq. 3's L2 term as AdamW's weight decay 2λ on the conv and linear
    # weights. "loss" adds λ·Σ‖W‖² to the loss as eq. 3 writes it; with Adam that collapses this
    # network from Xavier init (the deep layers' cross-entropy gradient starts tiny, Adam
    # normalises the larger L2 gradient into full-size steps toward zero; measured: chance
    # accuracy after 80 steps with the term, learning without it).
    decay = 2 * cfg.l2_lambda if settings.l2_mode == "decoupled" else 0.0
    optimizer = build_optimizer(model, settings.lr, decay, tensor_lr=settings.compile)
    # Before the scheduler and a saved optimizer state: both see the split parameter groups.
    backbones.scale_backbone_lr(optimizer, model, settings.backbone_lr_scale)
    loss_l2 = cfg.l2_lambda if settings.l2_mode == "loss" else 0.0
    scheduler = recipes.build_scheduler(optimizer, settings.schedule, lr_decay=settings.lr_decay,
                                        epochs=settings.epochs, warmup_epochs=settings.warmup_epochs)
    # Evaluation, best.pt and the localization figures use the EMA weights when there are any.
    ema = recipes.WeightAverage(model, settings.ema) if settings.ema else None
    eval_model = ema.module if ema is not None else model
    history: list[dict] = []
    partial = None  # where an epoch a stop signal interrupted stood
    if resuming:
        state = checkpoint.load(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        use_tensor_lr(optimizer, settings.compile)  # the saved run may have been compiled or not
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history = list(state["history"])
        partial = state.get("partial")
        checkpoint.restore_rng_state(state["rng"])  # every device's: dropout on CUDA draws there
    if settings.resume and ctx.is_main:
        # The checkpoint is the truth: the metrics files say what it says (a kill between two
        # writes may have left them an epoch ahead or behind).
        runs.rewrite_metrics(run_dir, history)
        where = f", step {partial['step']} of epoch {partial['epoch']}" if partial else ""
        print(f"resuming {run_dir} at epoch {len(history)}{where}"
              + ("" if history or partial else " (no epoch was saved: starting over)"), flush=True)
    precision = resolve_precision(settings.precision, ctx.device)
    crop = settings.crop_padding if settings.crop_padding is not None else cfg.image_size // 16
    sampler = train_sampler(settings, train_set.labels, ctx)
    mixing = settings.mixup or settings.cutmix
    mixer = recipes.BatchMixer(settings.mixup, settings.cutmix, cfg.num_classes, settings.seed) if mixing else None
    loss_fn = recipes.recipe_loss(settings.label_smoothing) if settings.label_smoothing or mixing else lnl_loss
    forward_model = model
    if ctx.distributed:
        # A frozen backbone's parameters get no gradient, which DDP must be told to expect.
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=settings.freeze_backbone_epochs > 0)
        if settings.compile:  # DDP's hooks split the graph: the forward is compiled alone
            forward_model = torch.compile(forward_model)
    train_step = TrainStep(model, optimizer, precision=precision, device=ctx.device, loss_l2=loss_l2,
                           compile=settings.compile and not ctx.distributed,
                           cuda_graphs=settings.cuda_graphs and not ctx.distributed, forward_model=forward_model,
                           loss_fn=loss_fn, clip_grad_norm=settings.clip_grad_norm)

    def epoch_loader(epoch: int, start: dict | None = None) -> BatchLoader:
        sampler.set_epoch(epoch)
        return BatchLoader(
            train_set.images, train_set.labels, list(sampler), settings.batch_size, ctx.device,
            shuffle=False, augment=True, crop_padding=crop, epoch_seed=settings.seed * 100_003 + epoch,
            drop_last=len(sampler) > settings.batch_size, start=start,
        )

    steps_per_epoch = len(epoch_loader(len(history)))
    best = max((h.get("val_accuracy", h["test_accuracy"]) for h in history), default=-1.0)
    damage = checkpoint.problem(run_dir / "best.pt") if history and ctx.is_main else None
    if damage:
        best = -1.0  # unknown: the next epoch's model is the best there is again
        print(_best_lost_warning(run_dir / "best.pt", damage, history, settings), file=sys.stderr, flush=True)
    trace = AttentionTrace(run_dir, test_set, settings.trace_every if ctx.is_main else 0, settings.trace_images,
                           ctx.device, len(history) * steps_per_epoch + (partial["step"] if partial else 0))
    warmup_seconds = 0.0
    progress = Progress(settings.progress, settings.epochs, first_epoch=len(history), enabled=ctx.is_main)
    # Deferred outermost: a signal while the writer drains on the way out is only recorded.
    with stop.deferred(), _cudnn_autotuning(settings, ctx.device), checkpoint.CheckpointWriter() as writer, \
            GpuMonitor(ctx.device) as monitor, \
            _tensorboard(settings, ctx, run_dir, len(history), test_set) as board:  # None without `tensorboard`
        if len(history) < settings.epochs and (ctx.device.type == "cuda" or settings.compile):
            warmup_seconds = _warm_up(train_step, model, train_set, test_set, settings, precision, crop, ctx, trace,
                                      mixer)
            if ctx.is_main:
                progress.write(f"warm-up (conv choices, kernel JIT, compile) {warmup_seconds:.1f} s, before epoch 1's clock")
        for epoch in range(len(history), settings.epochs):
            resumed = partial if partial is not None and partial["epoch"] == epoch + 1 else None
            loader = epoch_loader(epoch, resumed["loader"] if resumed else None)
            backbones.set_backbone_trainable(model, epoch >= settings.freeze_backbone_epochs)
            model.train()
            # (Σ loss·n, n), and the clock, as the interrupted part of the epoch left them
            loss_sum = resumed["loss_sum"].to(ctx.device) if resumed else torch.zeros(2, dtype=torch.float64, device=ctx.device)
            start = time.perf_counter() - (resumed["train_seconds"] if resumed else 0.0)
            window: list[torch.Tensor] = []  # losses not yet checked for NaN/inf
            lr = current_lr(optimizer)
            step = resumed["step"] if resumed else 0
            for step, (x, y) in enumerate(progress.epoch(loader, epoch, steps_done=step), start=step + 1):
                if mixer is not None:
                    x, y = mixer(x, y, epoch, step)
                loss = train_step(x, y)  # no host sync: the loss stays on the device
                if ema is not None:
                    ema.update(model)
                loss_sum[0] += loss.double() * len(y)
                loss_sum[1] += len(y)
                window.append(loss)
                trace.maybe_record(model, epoch + 1, step, len(loader), precision, ctx.device)
                if step % DIVERGENCE_CHECK_EVERY == 0:  # .item() waits for the device: not every step
                    _check_losses(window, step - len(window) + 1, epoch + 1, lr, run_dir, len(history))
                    seen = loss_sum[1].item() * ctx.world_size
                    progress.report(loss=loss.item(), images_per_second=seen / (time.perf_counter() - start))
                if stop.received and step < len(loader):  # at the last step the epoch's end is as near
                    break
            _check_losses(window, step - len(window) + 1 if window else 0, epoch + 1, lr, run_dir, len(history))
            if not _all_finite(model):  # a finite loss, then a step that broke the weights
                raise _diverged(run_dir, epoch + 1, step, float("nan"), lr, len(history))
            if stop.received and step < len(loader):
                where = dict(epoch=epoch + 1, step=step, loader=loader.position(), loss_sum=loss_sum,
                             train_seconds=time.perf_counter() - start)
                _save_partial(writer, model, optimizer, scheduler, history, where, settings, fold, run_dir, ema)
                trace.save()
                raise stop.interrupted(f"saved {last_path} at epoch {epoch + 1}, step {step} of {len(loader)}")
            train_seconds = time.perf_counter() - start
            loss_sum = distributed.all_reduce_sum(loss_sum, ctx)
            scheduler.step()
            # The checkpoint's host copy starts now and runs while evaluation (which only reads
            # the weights) does: the loop waits only for what is left of it afterwards.
            pending = _start_checkpoint(writer, model, optimizer, scheduler, run_dir, ema) if ctx.is_main else None

            test_start = time.perf_counter()
            test = evaluate(eval_model, test_set, settings.batch_size, ctx, precision)
            test_seconds = time.perf_counter() - test_start
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum[0].item() / max(loss_sum[1].item(), 1),
                "test_accuracy": test["accuracy"],
                "test_mean_class_accuracy": test["mean_class_accuracy"],
                "lr": lr,  # what the epoch trained with: the scheduler has stepped since
                "train_seconds": train_seconds,
                "test_seconds": test_seconds,
                "images_per_second": loss_sum[1].item() / train_seconds,
                "confusion": test["confusion"],
            }
            if val_set is not None:
                record["val_accuracy"] = evaluate(eval_model, val_set, settings.batch_size, ctx, precision)["accuracy"]
            if monitor.active:  # utilisation, memory (NVML's and torch's peak), power, temperature
                record["gpu"] = monitor.summary(reset=True)
            history.append(record)
            if ctx.is_main:
                selection = record.get("val_accuracy", test["accuracy"])
                improved = selection > best
                best = max(best, selection)
                _finish_checkpoint(writer, pending, history, settings, test, fold, run_dir, improved)
                trace.save()
                if board is not None:
                    board.log_epoch(record, eval_model, model.geometry, ctx.device, precision)
                progress.epoch_done(
                    f"epoch {epoch + 1:3d}  loss {record['train_loss']:.4f}  test acc {test['accuracy']:.4f}  "
                    f"mean class acc {test['mean_class_accuracy']:.4f}  {record['images_per_second']:.0f} img/s"
                    + (f"  peak {record['gpu']['torch_max_memory_allocated_bytes'] / 2**30:.1f} GiB" if "gpu" in record else "")
                )
            if stop.received:  # leaving the writer's context drains it: last.pt is on disk then
                raise stop.interrupted(f"saved {last_path} after epoch {epoch + 1}")
    summary = summarize(history, settings, backend_used, precision)
    summary["warmup_seconds"] = warmup_seconds
    regions = load_test_regions(settings, cfg.image_size) if ctx.is_main and fold is None else None
    if regions is not None:  # the synthetic faces know where their cues are: measure it
        summary["localization"] = localization.measure(eval_model, test_set.images, regions, ctx.device, precision)
    return summary


def _tensorboard(settings: TrainSettings, ctx: distributed.Context, run_dir: Path, first_epoch: int,
                 test_set: ImageSet):
    """The run's TensorBoard writer (the main process's, with `tensorboard`), or a context of None."""
    if not (settings.tensorboard and ctx.is_main):
        return contextlib.nullcontext()
    return tensorboard.EpochBoard(run_dir, first_epoch, test_set, settings.trace_images, _run_title(settings))


def _training_state(model, optimizer, scheduler, ema: recipes.WeightAverage | None) -> dict:
    """The tensors last.pt holds: weights (and their EMA), Adam state, scheduler, RNG streams."""
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 rng=checkpoint.rng_state())
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def _start_checkpoint(writer: checkpoint.CheckpointWriter, model, optimizer, scheduler,
                      run_dir: Path, ema: recipes.WeightAverage | None = None
                      ) -> tuple[checkpoint.PendingSnapshot, float]:
    """Begin the host copy of the epoch's tensors (`_training_state`) on a background thread.
    Nothing may change them until `_finish_checkpoint`."""
    before = writer.blocking_seconds
    pending = writer.start_snapshot(_training_state(model, optimizer, scheduler, ema), run_dir / "last.pt")
    return pending, writer.blocking_seconds - before


def _run_fields(settings: TrainSettings, fold: int | None, epoch: int, test_accuracy: float | None) -> dict:
    """What best.pt and last.pt say about the run besides tensors (plain values, copied)."""
    return dict(config=settings.model.to_dict(), settings=settings.to_dict(), epoch=epoch,
                test_accuracy=test_accuracy, class_names=list(labels.CLASS_NAMES), fold=fold)


def _save_partial(writer: checkpoint.CheckpointWriter, model, optimizer, scheduler, history: list[dict], where: dict,
                  settings: TrainSettings, fold: int | None, run_dir: Path,
                  ema: recipes.WeightAverage | None = None) -> None:
    """last.pt of an epoch a stop signal interrupted (`where`: see checkpoint's `partial`),
    written atomically after whatever the writer still had: the file is the previous epoch's
    last.pt or this one, never a mix. The metrics files get no line for a partial epoch."""
    fields = _run_fields(settings, fold, len(history), None)  # this model was never tested
    snap = writer.snapshot(dict(_training_state(model, optimizer, scheduler, ema), partial=where, history=history,
                                **fields), run_dir / "last.pt")  # all copied
    writer.submit(snap, run_dir / "last.pt")


def _best_lost_warning(path: Path, damage: str, history: list[dict], settings: TrainSettings) -> str:
    """The line that says a resumed run's best.pt is unusable (`damage`) and what happens to it."""
    scores = [h.get("val_accuracy", h["test_accuracy"]) for h in history]
    lost = f"epoch {int(np.argmax(scores)) + 1}'s model, the best recorded, is lost"
    if len(history) >= settings.epochs:
        return (f"warning: {path} {damage}, and no epoch is left to rebuild it from ({lost}); "
                f"last.pt holds epoch {len(history)}'s model")
    return (f"warning: {path} {damage}: it is rebuilt from epoch {len(history) + 1}'s model on, "
            f"the best of the epochs trained from now ({lost})")


def _finish_checkpoint(writer: checkpoint.CheckpointWriter, started: tuple[checkpoint.PendingSnapshot, float],
                       history: list[dict], settings: TrainSettings, test: dict, fold: int | None, run_dir: Path,
                       improved: bool) -> None:
    """last.pt (and best.pt when the selection accuracy improved) of the epoch just finished,
    handed to the background writer; the epoch's metrics line is appended only once last.pt is
    on disk, so a kill at any moment resumes to exactly the history the files show.

    The loop has waited only for the previous epoch's files (long written by now, as a rule)
    and for whatever of the host copy outlasted evaluation: `checkpoint_blocking_seconds`."""
    pending, blocked_at_start = started
    before = writer.blocking_seconds
    tensors = pending.result()
    record = history[-1]
    record["checkpoint_blocking_seconds"] = blocked_at_start + writer.blocking_seconds - before
    best_fields = _run_fields(settings, fold, record["epoch"], test["accuracy"])
    # Plain values only from here on (the history is small): the copy is the snapshot's own.
    last = checkpoint.Snapshot({**tensors.payload, **copy.deepcopy(best_fields), "history": copy.deepcopy(history)})
    # best.pt's weights are the evaluated ones: the EMA's when the run keeps one.
    best = checkpoint.Snapshot({"model": last.payload["ema" if "ema" in last.payload else "model"],
                                **{key: last.payload[key] for key in best_fields}}) if improved else None
    line = dict(record)
    # The writer is idle (start_snapshot waited for it), so handing the job over does not block.
    writer.submit(last, run_dir / "last.pt", best=best, best_path=run_dir / "best.pt" if improved else None,
                  after=lambda: runs.append_epoch(run_dir, line))


def _warm_up(train_step: TrainStep, model, train_set: ImageSet, test_set: ImageSet, settings: TrainSettings,
             precision: str, crop: int, ctx: distributed.Context, trace: AttentionTrace,
             mixer: recipes.BatchMixer | None = None) -> float:
    """What the first steps would otherwise pay inside epoch 1's clock, paid before it: a
    training step at the training shape (auto's conv timing, the Triton JIT, compile, cuDNN's
    search, graph capture; weights, optimizer and RNG left as found), and a forward at the
    evaluation batch and at the attention trace's probe batch (auto measures its conv choice
    per batch size, and the kernels JIT per shape: on an H200 the trace's first record stalled
    epoch 1 for about 9 s before this)."""
    start = time.perf_counter()
    count = min(settings.batch_size, len(train_set))
    loader = BatchLoader(train_set.images, train_set.labels, np.arange(count), count, ctx.device,
                         augment=True, crop_padding=crop, epoch_seed=settings.seed)
    x, y = next(iter(loader))
    if mixer is not None:  # the step's targets are then probabilities: warm up that signature
        x, y = mixer(x, y, 0, 0)
    train_step.warm_up(x, y)
    batches = {min(settings.batch_size, len(test_set))}
    if trace.active:
        batches.add(len(trace.indices))
    model.eval()
    for count in sorted(batches - {0}):
        loader = BatchLoader(test_set.images, test_set.labels, np.arange(count), count, ctx.device)
        x, _ = next(iter(loader))
        with torch.no_grad(), autocast(precision, ctx.device):
            model(x)
    model.train()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return time.perf_counter() - start


def summarize(history: list[dict], settings: TrainSettings, backend: str, precision: str) -> dict:
    """The run's figures for summary.json. `test_accuracy_last10_mean` (its name kept for the
    readers of earlier runs) is the mean over the last `epochs_averaged` epochs: the paper's
    LAST_EPOCHS_AVERAGED, or every epoch of a shorter run."""
    accuracies = [h["test_accuracy"] for h in history]
    best_epoch = int(np.argmax(accuracies)) + 1
    total_images = sum(h["images_per_second"] * h["train_seconds"] for h in history)
    averaged = min(LAST_EPOCHS_AVERAGED, len(accuracies))
    return {
        "test_accuracy_last10_mean": float(np.mean(accuracies[-averaged:])),
        "epochs_averaged": averaged,
        "test_accuracy_best": max(accuracies),
        "best_epoch": best_epoch,
        "test_accuracy_final": accuracies[-1],
        "mean_class_accuracy": history[-1]["test_mean_class_accuracy"],
        "epochs": len(history),
        "images_per_second": total_images / sum(h["train_seconds"] for h in history),
        "dataset": settings.dataset,
        "preset": settings.preset,
        "variant": settings.model.variant,
        "backend": backend,
        "precision": precision,
        "confusion": history[-1]["confusion"],
    }


# ---- the whole job ------------------------------------------------------------------------
def _prepare_run_dir(settings: TrainSettings, ctx: distributed.Context) -> Path:
    run_dir = Path(settings.out)
    if ctx.is_main:
        finished = (run_dir / "metrics.jsonl").exists() or any(run_dir.glob("fold*/metrics.jsonl"))
        if finished and not settings.resume:
            raise PathExistsError(
                "out", f"{run_dir} already holds a run; pass `resume` to continue it, `restart` to move it aside "
                f"and start over, or choose another `out`"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.remove_stale_temporaries(run_dir)
        (run_dir / "config.json").write_text(
            jsonio.dumps({"settings": settings.to_dict(), "model": settings.model.to_dict()}, indent=2)
        )
    return run_dir


def _last_epochs(count: int) -> str:
    return "the last epoch" if count == 1 else f"the last {count} epochs"


def summary_text(summary: dict, settings: TrainSettings, run_dir: Path, markdown: bool) -> str:
    """The run's summary as summary.md has it (`markdown`), or as plain text for the terminal:
    the same lines, without the emphasis, and the confusion matrix's path instead of the image."""
    strong = (lambda text: f"**{text}**") if markdown else str
    averaged = summary["epochs_averaged"]
    lines = [
        ("# " if markdown else "") + f"LNLAttenNet on {settings.dataset}",
        "",
        f"- preset {settings.preset}, variant {settings.model.variant}, backend {summary['backend']}, "
        f"precision {summary['precision']}, {summary['epochs']} epochs",
        f"- test accuracy, mean of {_last_epochs(averaged)}: "
        + strong(f"{summary['test_accuracy_last10_mean']:.4f}")
        + (f" ± {summary['test_accuracy_last10_std']:.4f} over {summary['folds']} folds"
           if "folds" in summary else ""),
        f"- best test accuracy {summary['test_accuracy_best']:.4f} (epoch {summary['best_epoch']})",
        f"- mean class accuracy (final epoch) {summary['mean_class_accuracy']:.4f}",
        f"- training throughput {summary['images_per_second']:.0f} images/s",
    ]
    if "localization" in summary:
        lines += localization.summary_lines(summary["localization"], strong)
    lines += ["", f"![confusion matrix]({runs.CONFUSION_FILE})" if markdown
              else f"confusion matrix: {run_dir / runs.CONFUSION_FILE}"]
    return "\n".join(lines) + "\n"


def _run_title(settings: TrainSettings) -> str:
    """What the run is, in its figures' titles."""
    return f"{settings.dataset}, {settings.preset}/{settings.model.variant}"


def _write_summary(run_dir: Path, summary: dict, settings: TrainSettings) -> str:
    """summary.json, confusion_matrix.png and summary.md; returns the summary for the terminal."""
    (run_dir / "summary.json").write_text(jsonio.dumps(summary, indent=2))
    figures.confusion_matrix(
        summary["confusion"], labels.CLASS_NAMES, run_dir / runs.CONFUSION_FILE,
        f"{_run_title(settings)}: final epoch",
    )
    (run_dir / "summary.md").write_text(summary_text(summary, settings, run_dir, markdown=True))
    return summary_text(summary, settings, run_dir, markdown=False)


def train(settings: TrainSettings) -> dict:
    """Run the protocol. With `resume`, the run in `out` continues with its own settings:
    `settings` may differ from them only in run_dir.RESUMABLE_CHANGES (ParameterError naming
    the field otherwise), and nothing is written before that is checked. With `restart`, the run
    in `out` is first moved aside (run_dir.move_aside) and training starts over.

    A single-process run answers SIGTERM, SIGUSR1 and SIGINT by saving where it stands and
    raising TrainingInterrupted (see StopSignals); the previous handlers are restored after."""
    settings.validate()
    if settings.out is None:
        if settings.resume:
            raise ParameterError("resume", "needs `out`: the run directory to continue")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        settings.out = str(Path("runs") / f"{settings.dataset}-{settings.preset}-{stamp}")
    if settings.resume:
        settings = runs.check_resume(Path(settings.out), settings)
    if settings.tensorboard:  # refused before anything is written
        tensorboard.require()
    ctx = distributed.setup(settings.device)
    try:  # before any work: a backend that cannot run here is the user's choice to fix
        resolve_name(settings.model.backend, ctx.device)
    except RuntimeError as error:
        distributed.teardown(ctx)
        reason = str(error).split(": ", 1)[-1]  # dispatch says "backend X cannot run on Y: <why>"
        raise ParameterError("backend", f"{settings.model.backend!r} cannot run on {ctx.device}: {reason}") from None
    if settings.cuda_graphs and ctx.device.type != "cuda":
        distributed.teardown(ctx)
        raise ParameterError("cuda_graphs", f"needs a CUDA device (CUDA graphs), and this run is on {ctx.device}")
    try:  # a run that cannot fit is refused before its directory is made
        memory.check_memory(settings, ctx.device)
    except ParameterError:
        distributed.teardown(ctx)
        raise
    lock = runs.RunLock(Path(settings.out)) if ctx.is_main else contextlib.nullcontext()
    stop = StopSignals(Path(settings.out))
    # Handlers belong to the main thread; under DDP a rank that stopped alone would hang the others.
    own_signals = threading.current_thread() is threading.main_thread() and not ctx.distributed
    try:
        with lock, stop if own_signals else contextlib.nullcontext():
            return _train_locked(settings, ctx, stop)
    finally:
        distributed.teardown(ctx)


def _train_locked(settings: TrainSettings, ctx: distributed.Context, stop: StopSignals) -> dict:
    if settings.restart:
        moved = runs.move_aside(Path(settings.out)) if ctx.is_main else None
        if moved is not None:
            print(f"moved the earlier run in {settings.out} aside to {moved} (nothing was deleted)", flush=True)
        settings = dataclasses.replace(settings, restart=False, resume=False)  # also what config.json records
    run_dir = _prepare_run_dir(settings, ctx)
    cache_progress = CacheProgress(settings.progress, enabled=ctx.is_main)
    runs_splits = load_run_splits(settings, settings.model.image_size, cache_progress)
    skipped = {item["path"]: item["reason"] for run in runs_splits for images in run.named().values()
               for item in images.skipped}
    if ctx.is_main:
        print(dataset_summary(settings, runs_splits, run_dir / "skipped.txt"), flush=True)
        if skipped:
            (run_dir / "skipped.txt").write_text(
                "".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped.items())))
    summaries = []
    for run in runs_splits:
        fold_dir = run_dir / f"fold{run.fold}" if run.fold is not None else run_dir
        if ctx.is_main:
            fold_dir.mkdir(parents=True, exist_ok=True)
        summaries.append(fit(settings, run.train, run.test, fold_dir, ctx, run.validation, run.fold, stop))
    summary = summaries[0] if len(summaries) == 1 else _merge_folds(summaries)
    if ctx.is_main:
        print(_write_summary(run_dir, summary, settings))
        print(f"run directory: {run_dir}")
        if skipped:
            print(f"warning: {len(skipped)} image(s) could not be decoded and were left out; "
                  f"they are listed with the reason in {run_dir / 'skipped.txt'} (`strict` makes them fatal)",
                  file=sys.stderr)
    # A rank that tears its process group down while another still works can abort the
    # job at exit (seen with gloo): leave together.
    distributed.barrier(ctx)
    return summary




def _merge_folds(summaries: list[dict]) -> dict:
    merged = dict(summaries[0])
    means = [s["test_accuracy_last10_mean"] for s in summaries]
    merged["test_accuracy_last10_mean"], merged["test_accuracy_last10_std"] = metrics.mean_std(means)
    merged["test_accuracy_best"] = float(np.mean([s["test_accuracy_best"] for s in summaries]))
    merged["mean_class_accuracy"] = float(np.mean([s["mean_class_accuracy"] for s in summaries]))
    merged["images_per_second"] = float(np.mean([s["images_per_second"] for s in summaries]))
    merged["confusion"] = np.sum([s["confusion"] for s in summaries], axis=0).tolist()
    merged["folds"] = len(summaries)
    merged["per_fold"] = [{k: v for k, v in s.items() if k != "confusion"} for s in summaries]
    return merged
