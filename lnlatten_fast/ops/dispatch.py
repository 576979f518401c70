"""Backend selection: which implementation of an op runs for a tensor on a device.

`reference` always runs. `native` needs the compiled extension (with CUDA for CUDA tensors).
`triton` needs Triton and either a CUDA device or TRITON_INTERPRET=1 for CPU tensors.
`auto` takes the fastest usable one per device: triton, then native, then reference on CUDA;
native, then reference on CPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..config import BACKENDS
from . import native, reference

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
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    return False, "Triton kernels are not part of this version yet (the Triton fast path issue)"


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


def resolve(backend: str, device: torch.device):
    """The module implementing `backend` for tensors on `device`."""
    return {"reference": reference, "native": native}[resolve_name(backend, device)]
