"""Backend selection: which implementation of an op runs for a tensor on a device.

`reference` always runs. `native` needs the compiled extension (with CUDA for CUDA tensors).
`triton` needs Triton and either a CUDA device or TRITON_INTERPRET=1 for CPU tensors.
`auto` takes the fastest usable one per device: triton, then native, then reference on CUDA;
native, then reference on CPU. For the convolutions on CUDA, `auto` does not assume Triton
beats cuDNN: the first call of each shape times both and remembers the winner
(`measured_choices()`, also printed by `python -m lnlatten_fast.info`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from ..config import BACKENDS
from . import native, reference, triton_attention, triton_conv

DEVICE_TYPES = ("cpu", "cuda")
_AUTO_ORDER = {"cuda": ("triton", "native", "reference"), "cpu": ("native", "reference")}


@dataclass(frozen=True)
class BackendStatus:
    backend: str
    device: str
    usable: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.backend:9s} {self.device:4s} {'yes' if self.usable else 'no ':3s}  {self.reason}"


def _triton_availability(device_type: str) -> tuple[bool, str]:
    for module in (triton_conv, triton_attention):
        usable, reason = module.availability(device_type)
        if not usable:
            return False, reason
    return True, reason


def _probe(backend: str, device_type: str) -> tuple[bool, str]:
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    if backend == "reference":
        return True, "pure PyTorch (ground truth)"
    if backend == "native":
        return native.availability(device_type)
    return _triton_availability(device_type)


# Probed once at import: what can run does not change during a process, and a plain dict
# lookup keeps backend resolution traceable by torch.compile without graph breaks.
_AVAILABILITY = {
    (name, dev): _probe(name, dev) for name in BACKENDS if name != "auto" for dev in DEVICE_TYPES
}


def availability(backend: str, device_type: str) -> tuple[bool, str]:
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    return _AVAILABILITY.get((backend, device_type), (False, f"unknown device type {device_type!r}"))


def backends() -> dict[str, dict[str, BackendStatus]]:
    """Every backend on every device type: usable here or not, and why."""
    table = {
        name: {dev: BackendStatus(name, dev, *availability(name, dev)) for dev in DEVICE_TYPES}
        for name in BACKENDS
        if name != "auto"
    }
    table["auto"] = {}
    for dev in DEVICE_TYPES:
        usable = table["reference"][dev].usable
        reason = f"uses {_auto_choice(dev)}" if usable else table["reference"][dev].reason
        table["auto"][dev] = BackendStatus("auto", dev, usable, reason)
    return table


def _auto_choice(device_type: str) -> str:
    for name in _AUTO_ORDER.get(device_type, ("reference",)):
        if availability(name, device_type)[0]:
            return name
    return "reference"


def resolve_name(backend: str, device: torch.device) -> str:
    """The backend that runs for tensors on `device` (`auto` resolved); raises if it cannot."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        backend = _auto_choice(device.type)
    usable, reason = availability(backend, device.type)
    if not usable:
        raise RuntimeError(f"backend {backend!r} cannot run on {device.type}: {reason}")
    return backend


class _TritonBackend:
    """The `triton` backend's op set: convolutions and copies from triton_conv, attention from
    triton_attention."""

    extract_patches = staticmethod(triton_conv.extract_patches)
    overlap_add = staticmethod(triton_conv.overlap_add)
    patch_conv3x3 = staticmethod(triton_conv.patch_conv3x3)
    grouped_conv3x3 = staticmethod(triton_conv.grouped_conv3x3)
    l1_nonlocal_attention = staticmethod(triton_attention.l1_nonlocal_attention)


_MODULES = {"reference": reference, "native": native, "triton": _TritonBackend}


def resolve(backend: str, device: torch.device):
    """The module implementing `backend` for tensors on `device`."""
    return _MODULES[resolve_name(backend, device)]


# ---- measured choice for the convolutions on CUDA ----------------------------------------
_MEASURED: dict[tuple, str] = {}
CONV_CANDIDATES = ("triton", "native")  # native = cuDNN grouped conv after extraction


def measured_choices() -> dict[tuple, str]:
    """(op, shapes, dtype, flags) -> the backend `auto` measured fastest for it."""
    return dict(_MEASURED)


def _time_once(fn, device: torch.device, repeats: int = 3) -> float:
    """Seconds per call of fn() on a CUDA device."""
    fn()  # warm-up: compilation and cuDNN's algorithm search are not what we compare
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def conv_backend(op: str, key: tuple, device: torch.device, run, timer=_time_once) -> str:
    """The conv backend `auto` uses for this shape: measured once, then remembered.

    `run(name)` runs the op (forward, and backward when the inputs need gradients) on backend
    `name`. Off CUDA, or while torch.compile traces, nothing is timed: what eager calls measured
    before holds, else the static order. A candidate that raises while being timed is dropped
    with a warning (one broken backend must not take the model down); if all do, `reference`.
    """
    full_key = (op, *key)
    if device.type != "cuda" or torch.compiler.is_compiling():
        return _MEASURED.get(full_key, _auto_choice(device.type))
    if full_key not in _MEASURED:
        usable = [name for name in CONV_CANDIDATES if availability(name, device.type)[0]]
        if len(usable) == 1:
            _MEASURED[full_key] = usable[0]
        else:
            seconds = {}
            for name in usable:
                try:
                    seconds[name] = timer(lambda: run(name), device)
                except Exception as error:  # noqa: BLE001 - any failure disqualifies it alike
                    warnings.warn(
                        f"backend 'auto' dropped {name!r} for {op} {key}: it raised "
                        f"{type(error).__name__}: {error}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            _MEASURED[full_key] = min(seconds, key=seconds.get) if seconds else "reference"
    return _MEASURED[full_key]
