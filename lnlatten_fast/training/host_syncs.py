"""Which ops make the host wait for the device, and a dispatch mode that finds them.

A training step on a GPU runs ahead of the device only while nothing asks for a value the
device has not produced yet. These ops do (on CUDA; on other devices they are listed the same,
so a CPU run shows where a GPU run would wait):

- reading a value on the host: `.item()`, `bool(t)`, `t.tolist()` (`_local_scalar_dense`,
  `is_nonzero`), comparisons that answer in Python (`equal`);
- ops whose output size depends on the data: `nonzero` (and `masked_select`, boolean-mask
  indexing, `unique`, which use it);
- copies from the device to the host;
- host-to-device copies from pageable (not pinned) host memory: the driver stages them
  synchronously.

    with HostSyncCounter() as syncs:
        step(x, y)
    syncs.events   # [(reason, op name), ...]
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNCING_OPS", "host_sync_reason", "HostSyncCounter"]

SYNCING_OPS = {
    "aten::_local_scalar_dense": "value read on the host (.item(), bool(), .tolist())",
    "aten::is_nonzero": "value read on the host (bool(tensor))",
    "aten::equal": "value read on the host (torch.equal)",
    "aten::nonzero": "data-dependent output size (nonzero)",
    "aten::nonzero_static": None,  # a fixed size: no wait
    "aten::masked_select": "data-dependent output size (masked_select)",
    "aten::unique_dim": "data-dependent output size (unique)",
    "aten::_unique2": "data-dependent output size (unique)",
}
_COPIES = ("aten::_to_copy", "aten::copy_", "aten::to")


def _device_of(value) -> torch.device | None:
    return value.device if isinstance(value, torch.Tensor) else None


def host_sync_reason(func, args, kwargs, out, pinned=None) -> str | None:
    """Why this op call makes the host wait for the device, or None.

    `pinned(tensor) -> bool` says whether a host tensor is in pinned memory (default
    `Tensor.is_pinned`; a tracer on meta tensors passes what the pipeline asked for)."""
    name = func._schema.name
    reason = SYNCING_OPS.get(name)
    if reason is not None:
        return reason
    if name not in _COPIES:
        return None
    if name == "aten::copy_":
        dst, src = args[0], args[1]
    else:
        src, dst = args[0], out
    src_device, dst_device = _device_of(src), _device_of(dst)
    if src_device is None or dst_device is None or src_device.type == dst_device.type:
        return None
    if dst_device.type == "cpu":
        return "copy from the device to the host"
    if src_device.type == "cpu":
        is_pinned = pinned if pinned is not None else (lambda t: t.is_pinned())
        if not is_pinned(src):
            return "host-to-device copy from pageable memory"
    return None


class HostSyncCounter(TorchDispatchMode):
    """Records every op call below it that makes the host wait for the device."""

    def __init__(self, pinned=None):
        super().__init__()
        self.pinned = pinned
        self.events: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        reason = host_sync_reason(func, args, kwargs, out, self.pinned)
        if reason is not None:
            self.events.append((reason, func._schema.name))
        return out
