"""Backend selection: which registered implementation of an op runs for a tensor on a device.

Everything here is read off the registry (`ops.registry`): which backends exist, what each
implements, whether it can run on a device type (probed once at import: that does not change
during a process, and plain dict lookups keep resolution traceable by torch.compile) and
`auto`'s order per device type: on CUDA triton, native, reference; on CPU native, reference.

For the convolutions on CUDA, `auto` does not assume Triton beats cuDNN: the first eager call
of each shape times every candidate and remembers the winner (`measured_choices()`, also
printed by `python -m lnlatten_fast.info`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from . import native, reference, registry, triton  # noqa: F401  (importing registers the backends)
from .registry import DEVICE_TYPES

__all__ = [
    "BackendStatus", "availability", "backends", "resolve_name", "implementation",
    "conv_backend", "measured_choices", "conv_candidates", "DeviceFaultError", "is_device_fault",
]


@dataclass(frozen=True)
class BackendStatus:
    backend: str
    device: str
    usable: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.backend:9s} {self.device:4s} {'yes' if self.usable else 'no ':3s}  {self.reason}"


def _probe(backend: str, device_type: str) -> tuple[bool, str]:
    """The backend's own reason comes first: a backend that is not installed or not built says
    so on every device type, since a GPU would not make it run."""
    usable, reason = registry.backend(backend).availability(device_type)
    if usable and device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return usable, reason


_AVAILABILITY = {
    (name, dev): _probe(name, dev) for name in registry.registered_backends() for dev in DEVICE_TYPES
}
# auto's candidates per device type, best first (usable or not: availability decides later).
_AUTO_ORDER = {
    dev: tuple(sorted(
        (name for name in registry.registered_backends() if dev in registry.backend(name).auto_rank),
        key=lambda name, dev=dev: registry.backend(name).auto_rank[dev],
    ))
    for dev in DEVICE_TYPES
}


def availability(backend: str, device_type: str) -> tuple[bool, str]:
    if backend not in registry.registered_backends():
        raise ValueError(f"backend must be one of {registry.registered_backends()}, got {backend!r}")
    return _AVAILABILITY.get((backend, device_type), (False, f"unknown device type {device_type!r}"))


def _auto_choice(device_type: str) -> str:
    for name in _AUTO_ORDER.get(device_type, ()):
        if availability(name, device_type)[0]:
            return name
    return "reference"


def backends() -> dict[str, dict[str, BackendStatus]]:
    """Every backend on every device type: usable here or not, and why."""
    table = {
        name: {dev: BackendStatus(name, dev, *availability(name, dev)) for dev in DEVICE_TYPES}
        for name in registry.registered_backends()
    }
    table["auto"] = {}
    for dev in DEVICE_TYPES:
        usable = table["reference"][dev].usable
        reason = f"uses {_auto_choice(dev)}" if usable else table["reference"][dev].reason
        table["auto"][dev] = BackendStatus("auto", dev, usable, reason)
    return table


def resolve_name(backend: str, device: torch.device) -> str:
    """The backend that runs for tensors on `device` (`auto` resolved); raises if it cannot."""
    if backend != "auto" and backend not in registry.registered_backends():
        raise ValueError(f"backend must be one of {('auto', *registry.registered_backends())}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        backend = _auto_choice(device.type)
    usable, reason = availability(backend, device.type)
    if not usable:
        raise RuntimeError(f"backend {backend!r} cannot run on {device.type}: {reason}")
    return backend


def implementation(op: str, backend: str, device: torch.device):
    """The function implementing `op` on `backend` (`auto` resolved) for tensors on `device`."""
    return registry.implementation(op, resolve_name(backend, device))


# ---- measured choice for the convolutions on CUDA ----------------------------------------
_MEASURED: dict[tuple, str] = {}


def conv_candidates(op: str) -> tuple[str, ...]:
    """What `auto` times for a conv on CUDA: every backend it ranks there that implements the
    op, except the reference (never the fast path)."""
    return tuple(
        name for name in _AUTO_ORDER["cuda"]
        if name != "reference" and (op, name) in registry.implementations(op)
    )


def measured_choices() -> dict[tuple, str]:
    """(op, per-image shapes, dtype, flags) -> the backend `auto` measured fastest for it."""
    return dict(_MEASURED)


def _time_once(fn, device: torch.device, repeats: int = 3) -> float:
    """Seconds per call of fn() on a CUDA device. Synchronises first (a fault of work queued
    earlier is not this candidate's) and before returning (this candidate's faults surface here,
    while it is the one being timed)."""
    torch.cuda.synchronize(device)
    fn()  # warm-up: compilation and cuDNN's algorithm search are not what we compare
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


# A CUDA error that poisons the context: every later call fails too, so no other candidate can
# be timed after it and the process cannot go on. (A launch that fails cleanly, e.g. "no kernel
# image is available", leaves the context usable: that candidate is dropped instead.)
_STICKY_FAULTS = (
    "illegal memory access", "misaligned address", "device-side assert", "unspecified launch failure",
    "illegal instruction", "hardware stack error", "an illegal address",
)


class DeviceFaultError(RuntimeError):
    """A conv candidate faulted on the device while `auto` timed it."""


def is_device_fault(error: BaseException) -> bool:
    text = str(error).lower()
    return any(fault in text for fault in _STICKY_FAULTS)


def conv_backend(op: str, key: tuple, device: torch.device, run, timer=_time_once) -> str:
    """The conv backend `auto` uses for this shape: measured once, then remembered.

    `run(name)` runs the op (forward, and backward when the inputs need gradients) on backend
    `name`. Off CUDA, or while torch.compile traces, nothing is timed: what eager calls measured
    before holds, else the static order. A candidate that raises while being timed is dropped
    with a warning (one broken backend must not take the model down); if all do, `reference`.
    A device-side fault (an illegal address, say) cannot be dropped: it poisons the CUDA
    context, so it raises DeviceFaultError naming the candidate, the op and the backend that
    avoids it.
    """
    full_key = (op, *key)
    if device.type != "cuda" or torch.compiler.is_compiling():
        return _MEASURED.get(full_key, _auto_choice(device.type))
    if full_key not in _MEASURED:
        usable = [name for name in conv_candidates(op) if availability(name, device.type)[0]]
        if len(usable) == 1:
            _MEASURED[full_key] = usable[0]
        else:
            seconds = {}
            for name in usable:
                try:
                    seconds[name] = timer(lambda: run(name), device)
                except Exception as error:  # noqa: BLE001 - any failure disqualifies it alike
                    if is_device_fault(error):
                        others = [other for other in usable if other != name] + ["reference"]
                        raise DeviceFaultError(
                            f"backend 'auto' was timing {name!r} for {op} (shape {key[0]}) when the device "
                            f"faulted: {error}. The CUDA context cannot be used after this; run again with "
                            f"backend {others[0]!r} (--backend {others[0]}) to avoid {name!r}"
                        ) from error
                    warnings.warn(
                        f"backend 'auto' dropped {name!r} for {op} {key}: it raised "
                        f"{type(error).__name__}: {error}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            _MEASURED[full_key] = min(seconds, key=seconds.get) if seconds else "reference"
    return _MEASURED[full_key]
