"""Will a training run fit in this machine's memory? Checked before anything is written.

The estimate is a lower bound, so a refused run could not have fitted: the cached images
(N x S x S x 3 bytes, where N is known before the data is read: the synthetic set's sizes; a
dataset on disk is counted as 0 until it is listed), the activations one training batch keeps
for the backward (`accounting.activation_elements`, 2 bytes an element under bf16, else 4),
and the weights with their gradients and Adam's two moments. On CUDA the activations and
weights are on the device and the images in host memory; on the CPU all of them are in host
memory. What a training step really takes is larger (see `activation_elements`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..accounting import activation_elements
from ..data.datasets import SYNTHETIC
from ..data.datasets.synthetic import SPLIT_SIZES
from ..errors import ParameterError
from ..model import LNLAttenNet, count_parameters
from .precision import resolve_precision
from .settings import TrainSettings

__all__ = ["estimate", "host_memory_available", "device_memory_available", "check_memory"]

GiB = 2**30
#: Per parameter: the fp32 weight, its gradient and Adam's two moments.
BYTES_PER_PARAMETER = 4 * 4


def _split_sizes(settings: TrainSettings) -> tuple[int, int] | None:
    """(train, test) images of the run, where they are known before the data is read."""
    if settings.dataset != SYNTHETIC:
        return None
    return settings.synthetic_train or SPLIT_SIZES["train"], settings.synthetic_test or SPLIT_SIZES["test"]


def estimate(settings: TrainSettings, device: torch.device) -> dict[str, int]:
    """The lower bound of the module docstring, of validated `settings` on `device`, in bytes by
    part: "images" (host memory), "activations" of one batch (and "activations_per_image") and
    "weights" (the run's device)."""
    config = settings.model
    sizes = _split_sizes(settings)
    batch = settings.batch_size if sizes is None else min(settings.batch_size, sizes[0])  # a batch holds at most the split
    element = 2 if resolve_precision(settings.precision, device) == "bf16" else 4
    with torch.device("meta"):  # counted, not allocated
        parameters = count_parameters(LNLAttenNet(config))
    per_image = activation_elements(config) * element
    return dict(
        images=(sum(sizes) if sizes else 0) * config.image_size**2 * 3,
        activations=batch * per_image,
        activations_per_image=per_image,
        weights=parameters * BYTES_PER_PARAMETER,
    )


def host_memory_available() -> int | None:
    """Bytes this process may still allocate: /proc/meminfo's MemAvailable, capped by a cgroup
    v2 memory limit (a container's or a batch job's); None where neither can be read."""
    found = []
    try:
        found += [int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    if not found:  # no /proc: the free physical pages
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def device_memory_available(device: torch.device) -> int | None:
    """Free bytes of a CUDA device; None for the CPU (its memory is the host's)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def check_memory(settings: TrainSettings, device: torch.device, host_available: int | None = None,
                 device_available: int | None = None) -> dict[str, int]:
    """Refuse a run whose memory lower bound exceeds what is available (the machine's, unless
    given): ParameterError naming `image_size` and `batch_size` with the figures. Returns the
    estimate."""
    need = estimate(settings, device)
    on_cuda = device.type == "cuda"
    host_available = host_memory_available() if host_available is None else host_available
    device_available = device_memory_available(device) if device_available is None and on_cuda else device_available
    model_bytes = need["activations"] + need["weights"]
    pools = [("host", need["images"] + (0 if on_cuda else model_bytes), host_available, not on_cuda)]
    if on_cuda:
        pools.append((str(device), model_bytes, device_available, True))
    for where, wanted, available, holds_batch in pools:
        if available is None or wanted <= available:
            continue
        parts = [f"{need['images'] / GiB:.1f} GiB of cached images"] if need["images"] and where == "host" else []
        if holds_batch:
            parts += [f"{need['activations'] / GiB:.1f} GiB of activations for one batch",
                      f"{need['weights'] / GiB:.1f} GiB of weights and optimizer state"]
        one_image = wanted - need["activations"] + need["activations_per_image"]
        smaller_batch_fits = holds_batch and need["activations"] > need["activations_per_image"] and one_image <= available
        first, second = ("batch_size", "image_size") if smaller_batch_fits else ("image_size", "batch_size")
        value = {"image_size": settings.model.image_size, "batch_size": settings.batch_size}
        advice = f"a smaller `{first}` or `{second}`"
        if need["images"] > available:  # no batch size fits: the images alone do not
            advice = "a smaller `image_size` or fewer images (`synthetic_train`, `synthetic_test`)"
        raise ParameterError(
            first, f"{value[first]} with `{second}` {value[second]} needs at least {wanted / GiB:.1f} GiB of "
            f"{where} memory ({', '.join(parts)}), more than the {available / GiB:.1f} GiB available here: "
            f"use {advice}")
    return need
