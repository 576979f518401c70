"""Checkpoints: written atomically, loadable with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: `model` (state
dict), `config` (LNLConfig fields), `settings` (`TrainSettings.to_dict()`, the model nested
under `settings["model"]`), `epoch`, `test_accuracy`, `class_names`, `fold`, and in `last.pt`
also `optimizer`, `scheduler`, `history` and `rng` (`rng_state()`) for --resume. A `last.pt`
written when a stop signal interrupted an epoch also holds `partial`: where in the epoch it
stopped (`epoch`, `step`, the loader's `position()`, the running `loss_sum`, `train_seconds`);
its model is then the model after that step, `epoch` still names the last finished epoch, and
`test_accuracy` is None (that model was never tested).

`load` returns every checkpoint in the current layout: older formats, and state_dicts with the
flat keys of the model before lnlatten_fast.nn (`model.migrate_state_dict`), are migrated here.

During training the files are written off the training thread: `snapshot` copies a payload to
host memory at an epoch's end, and a `CheckpointWriter` writes the copies in the background
while the next epoch trains. `CheckpointWriter.start_snapshot` takes the copy itself on a
background thread too, while the epoch's evaluation (which reads the weights, never writes them)
runs; the loop waits only if the copy is not done when evaluation is.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import os
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..model import migrate_state_dict

__all__ = [
    "FORMAT", "UnreadableCheckpointError", "save_atomic", "load", "problem", "Snapshot", "snapshot", "CheckpointWriter", "PendingSnapshot", "rng_state",
    "restore_rng_state",
]

FORMAT = "lnlatten_fast/2"
# Format 1 kept the run's settings flat, with these model fields beside the run's own; its
# `config` recorded l2_lambda = 1e-4 whatever the run used (the settings held the real λ).
_FORMAT_1 = "lnlatten_fast/1"
_FORMAT_1_MODEL_FIELDS = ("variant", "alpha", "num_patches", "overlap", "image_size", "backend", "l2_lambda")


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file.
    Refuses a model with a NaN or infinite weight (a diverged run must not overwrite a good one)."""
    path = Path(path)
    floats = {name: t for name, t in (payload.get("model") or {}).items() if torch.is_floating_point(t)}
    # One check (one device sync); the names are looked up only when it fails.
    if floats and not bool(torch.stack([t.isfinite().all() for t in floats.values()]).all()):
        raise _non_finite_error(floats, path)
    _write_atomic(payload, path)


def _non_finite_error(model: dict, path) -> ValueError:
    bad = [name for name, t in model.items() if torch.is_floating_point(t) and not bool(t.isfinite().all())]
    return ValueError(f"refusing to save {path if path is not None else 'a checkpoint'}: "
                      f"non-finite values in {', '.join(bad[:3])}")


def _write_atomic(payload: dict, path: Path) -> None:
    """save_atomic without the finiteness check (a Snapshot was checked when it was taken)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({**payload, "format": FORMAT}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        # A full disk surfaces from torch's writer as "unexpected pos ...": say what it is, and
        # never leave the partial file behind (it would keep the disk full).
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        reason = "no space left on device" if free < 16 * 2**20 else str(error)
        raise OSError(f"could not write checkpoint {path}: {reason} ({free // 2**20} MiB free)") from error


class UnreadableCheckpointError(ValueError):
    """`load` could not read `path` as a checkpoint: `reason` says why in a phrase ("is
    truncated or not a checkpoint (0 bytes)"); the message adds what to do."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"checkpoint {path} {reason}: pass another one (a run's best.pt or last.pt), "
                         f"or copy it again from where it came")
        self.path, self.reason = path, reason


def load(path, mmap: bool = False) -> dict:
    """The checkpoint as a dict in the current format. `mmap`: map the tensors from the file
    instead of reading them (cheap when only the settings or history are wanted).
    UnreadableCheckpointError for an empty, torn or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:  # unreadable for the system's reasons (permissions): its message names them
        raise
    except Exception as error:  # torch's reason is its internals ("mmap", a zip record): not the user's words
        size = path.stat().st_size
        raise UnreadableCheckpointError(path, f"is truncated or not a checkpoint ({size} bytes)") from error
    if isinstance(payload, dict) and payload.get("format") == _FORMAT_1:
        payload = _migrate_format_1(payload)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnreadableCheckpointError(path, f"is not an lnlatten_fast checkpoint (format {FORMAT} expected)")
    if "model" in payload:  # the state_dict's keys from before lnlatten_fast.nn
        payload["model"] = migrate_state_dict(payload["model"])
    return payload


def problem(path) -> str | None:
    """What keeps `path` from serving as a model (a phrase: "does not exist", "is truncated or
    not a checkpoint (0 bytes)", "holds non-finite weights (name)"), or None when it loads and
    its weights are finite."""
    try:
        model = load(path).get("model")
    except FileNotFoundError:
        return "does not exist"
    except UnreadableCheckpointError as error:
        return error.reason
    if not isinstance(model, dict) or not model:
        return "holds no model"
    bad = [name for name, t in model.items() if torch.is_floating_point(t) and not bool(t.isfinite().all())]
    return f"holds non-finite weights ({', '.join(bad[:3])})" if bad else None


def _migrate_format_1(payload: dict) -> dict:
    """Nest the flat settings' model fields: the model is the recorded `config` with the λ the
    run really used (format 1's `config` always said 1e-4)."""
    settings = dict(payload["settings"])
    model = dict(payload["config"], l2_lambda=settings["l2_lambda"])
    for name in _FORMAT_1_MODEL_FIELDS:
        settings.pop(name, None)
    return {**payload, "format": FORMAT, "config": model, "settings": {**settings, "model": model}}


# ---- snapshots ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A checkpoint payload copied to host memory by `snapshot`: no tensor or container in it
    is shared with the live model, optimizer or history, and its model weights are finite."""

    payload: dict

    def subset(self, keys: Iterable[str]) -> Snapshot:
        """The snapshot of these keys only (best.pt's payload out of last.pt's), sharing the
        copies: nothing is copied twice."""
        return Snapshot({key: self.payload[key] for key in keys})


def snapshot(payload: dict, path: Path | None = None, buffers: dict | None = None) -> Snapshot:
    """Copy every tensor of `payload` (nested dicts, lists and tuples) once into host memory,
    so training may go on changing the originals while the copy is written.

    CUDA tensors go to pinned memory with asynchronous copies and one stream sync per device;
    CPU tensors are copied. A tensor reached twice (tied weights) is copied once and stays
    shared. Containers are copied too; other values are kept (numbers and strings cannot change).
    Refuses a model (`payload["model"]`) with a NaN or infinite weight, as `save_atomic` does,
    naming `path` (the file the snapshot is for) when given.

    `buffers` (a dict the caller keeps between snapshots) holds the previous snapshot's host
    tensors by their place in the payload; one that still fits is copied into instead of
    allocating anew (fresh host memory costs a page fault per page, and pinned memory a driver
    call: more than the copy itself). The caller must be done with the previous snapshot."""
    copies: dict[tuple, torch.Tensor] = {}
    devices_to_sync: set[torch.device] = set()

    def host_copy(tensor: torch.Tensor, place: tuple) -> torch.Tensor:
        # Keyed by the memory viewed, not the object: state_dict() detaches a tied weight into a
        # new tensor under each of its names. (`payload` keeps the originals alive meanwhile, so
        # no address or id is reused.)
        if tensor.layout == torch.strided:
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
        else:
            key = (id(tensor),)
        if key not in copies:
            old = buffers.get(place) if buffers is not None else None
            copies[key] = _copy_to_host(tensor.detach(), devices_to_sync, old)
            if buffers is not None:
                buffers[place] = copies[key]
        return copies[key]

    def copy_tree(value, place: tuple):
        if isinstance(value, torch.Tensor):
            return host_copy(value, place)
        if isinstance(value, dict):
            copied = collections.OrderedDict() if isinstance(value, collections.OrderedDict) else {}
            copied.update((key, copy_tree(item, (*place, key))) for key, item in value.items())
            if isinstance(value, collections.OrderedDict) and vars(value):
                # A state_dict's `_metadata` (module versions) rides on the OrderedDict itself.
                vars(copied).update(copy.deepcopy(vars(value)))
            return copied
        if isinstance(value, list):
            return [copy_tree(item, (*place, i)) for i, item in enumerate(value)]
        if type(value) is tuple:
            return tuple(copy_tree(item, (*place, i)) for i, item in enumerate(value))
        return value

    model = payload.get("model") or {}
    # The finiteness flags are computed where the weights live and copied back with the rest,
    # so the check costs no sync of its own.
    weights_by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in model.values():
        if torch.is_floating_point(tensor):
            weights_by_device.setdefault(tensor.device, []).append(tensor.detach())
    finite_flags = [_copy_to_host(torch.stack([t.isfinite().all() for t in weights]).all(), devices_to_sync)
                    for weights in weights_by_device.values()]
    copied = copy_tree(payload, ())
    for device in devices_to_sync:  # the one wait for the device: every copy above is then done
        torch.cuda.current_stream(device).synchronize()
    if not all(bool(flag) for flag in finite_flags):
        raise _non_finite_error(copied["model"], path)
    return Snapshot(copied)


def _copy_to_host(tensor: torch.Tensor, devices_to_sync: set, reuse: torch.Tensor | None = None) -> torch.Tensor:
    """A host copy of `tensor`, into `reuse` when it has the same shape, strides and dtype."""
    pinned = tensor.device.type == "cuda"  # pinned memory lets the copy run asynchronously
    fits = (reuse is not None and reuse.dtype == tensor.dtype and reuse.shape == tensor.shape
            and reuse.stride() == tensor.stride() and reuse.is_pinned() == pinned)
    host = reuse if fits else torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cpu",
                                                  pin_memory=pinned)
    if pinned:
        host.copy_(tensor, non_blocking=True)
        devices_to_sync.add(tensor.device)  # the caller syncs once for all of them
    else:
        host.copy_(tensor)  # a real copy: the optimizer updates the original in place
    return host


# ---- background writer ------------------------------------------------------------------------
class CheckpointWriter:
    """Writes checkpoint snapshots on a background thread, in the order they are submitted.

    One per training run, used as a context manager: leaving it (on an exception too) waits
    until everything submitted is on disk and stops the thread. At most one submission is in
    flight: `submit` first waits for the previous one, so host memory holds at most two
    snapshots and a slow disk slows training down instead of filling memory. A write error is
    raised on the caller's thread by the next `submit`, `wait` or `close`; leaving the context
    on another exception raises the write error instead (the other one as its context), since
    the other's account of which checkpoint was saved may then be wrong.

    `blocking_seconds` adds up the time the caller spent blocked in `snapshot`, `submit`,
    `wait` and `close`: what checkpointing costs training. `background=False` writes on the
    caller's thread inside `submit` (errors are raised there), for debugging."""

    def __init__(self, background: bool = True):
        self.background = background
        self.blocking_seconds = 0.0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._buffers: dict = {}  # the last snapshot's host tensors, reused by the next (see snapshot)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def snapshot(self, payload: dict, path: Path | None = None) -> Snapshot:
        """`snapshot(payload, path)` into the writer's reused host buffers (after waiting for
        the previous submission to be written), its time counted in `blocking_seconds`."""
        with self._blocking():
            self._wait_idle()
            return snapshot(payload, path, self._buffers)

    def start_snapshot(self, payload: dict, path: Path | None = None) -> "PendingSnapshot":
        """`snapshot(payload, path)` on a background thread; returns at once. Nothing in
        `payload` may change until the result is taken (`PendingSnapshot.result`): read-only
        work such as evaluation may run meanwhile. Waits for the previous submission first, so
        host memory never holds more than two snapshots. CUDA copies queue on the calling
        thread's current stream behind the work already queued there (the last optimizer step),
        so they see the finished weights."""
        with self._blocking():
            self._wait_idle()
            streams = {}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                streams = {torch.device("cuda", i): torch.cuda.current_stream(i) for i in range(torch.cuda.device_count())}
            pending = PendingSnapshot(self)

            def copy_on_the_callers_streams():
                with contextlib.ExitStack() as stack:
                    for stream in streams.values():
                        stack.enter_context(torch.cuda.stream(stream))
                    return snapshot(payload, path, self._buffers)

            pending._start(copy_on_the_callers_streams)
            return pending

    def submit(self, last: Snapshot, last_path: Path, *, best: Snapshot | None = None, best_path: Path | None = None,
               after: Callable[[], None] | None = None) -> None:
        """Write `best` to `best_path` (when given), then `last` to `last_path`, each atomically
        (`save_atomic`), then call `after()` on the writer's thread: whatever `after` records
        (the epoch's metrics line) is never ahead of last.pt. Waits for the previous submission
        first, and raises its error if it failed (this submission is then not written)."""
        if self._closed:
            raise RuntimeError("the checkpoint writer is closed")
        if (best is None) != (best_path is None):
            raise TypeError("submit takes best and best_path together")
        writes = ([(best, Path(best_path))] if best is not None else []) + [(last, Path(last_path))]
        for snap, path in writes:
            if not isinstance(snap, Snapshot):
                # A live payload would be written while the next epoch changes it.
                raise TypeError(f"submit takes checkpoint.snapshot(...) for {path}, not a {type(snap).__name__}")
        with self._blocking():
            self._wait_idle()
            if not self.background:
                _write_job(writes, after)
                return
            if self._thread is None:  # daemon: a writer nobody closes must not keep the process alive
                self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
                self._thread.start()
            self._idle.clear()
            self._jobs.put((writes, after))

    def wait(self) -> None:
        """Block until everything submitted is on disk; raise the error of a failed write."""
        with self._blocking():
            self._wait_idle()

    def close(self) -> None:
        """`wait`, then stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()

    @contextlib.contextmanager
    def _blocking(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.blocking_seconds += time.perf_counter() - start

    def _wait_idle(self) -> None:
        self._idle.wait()
        error, self._error = self._error, None  # raised once: close() after a raised error is quiet
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                _write_job(*job)
            except BaseException as error:  # kept for the caller's thread: a dead writer would hang it
                self._error = error
            finally:
                job = None  # drop the snapshot before the next one may be taken
                self._idle.set()


class PendingSnapshot:
    """A snapshot being copied on a background thread (`CheckpointWriter.start_snapshot`)."""

    def __init__(self, writer: CheckpointWriter):
        self._writer = writer
        self._done = threading.Event()
        self._value: Snapshot | None = None
        self._error: BaseException | None = None

    def _start(self, work: Callable[[], Snapshot]) -> None:
        def run():
            try:
                self._value = work()
            except BaseException as error:  # re-raised by result() on the training thread
                self._error = error
            finally:
                self._done.set()

        threading.Thread(target=run, name="checkpoint-snapshot", daemon=True).start()

    def result(self) -> Snapshot:
        """The finished snapshot (waiting for it, counted in the writer's `blocking_seconds`);
        raises what the copy raised (non-finite weights, say)."""
        with self._writer._blocking():
            self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def _write_job(writes: list[tuple[Snapshot, Path]], after: Callable[[], None] | None) -> None:
    for snap, path in writes:
        _write_atomic(snap.payload, path)
    if after is not None:
        after()


# ---- random number generators -----------------------------------------------------------------
def rng_state() -> dict:
    """The state of every random number generator training draws from, for last.pt:
    {"cpu": ByteTensor, "cuda": [ByteTensor per device]} ("cuda" only once CUDA is in use:
    asking earlier would start it). Plain tensors and lists: loadable with weights_only=True."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state) -> None:
    """Restore `rng_state()`'s dict, or the bare CPU ByteTensor older checkpoints hold.
    CUDA states for devices this machine lacks are skipped with one RuntimeWarning naming them;
    the CPU state and the devices present are restored."""
    if isinstance(state, torch.Tensor):  # the format of last.pt before CUDA states were kept
        torch.set_rng_state(state)
        return
    if not isinstance(state, dict) or not isinstance(state.get("cpu"), torch.Tensor):
        got = "a dict without a 'cpu' tensor" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a random number generator state: expected rng_state()'s dict, got {got}")
    torch.set_rng_state(state["cpu"])
    cuda = list(state.get("cuda") or [])
    if not cuda:
        return
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if present:
        torch.cuda.set_rng_state_all(cuda[:present])
    if len(cuda) > present:
        missing = ", ".join(f"cuda:{index}" for index in range(present, len(cuda)))
        warnings.warn(f"random number generator state of {missing} not restored: this machine has {present} "
                      f"CUDA device(s); the CPU state and the devices present were restored", RuntimeWarning,
                      stacklevel=2)
