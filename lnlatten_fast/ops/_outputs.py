"""Output allocation of the compiled backends (native, triton), and the test hook that poisons it.

Inside `poisoned_outputs()` every output these backends allocate starts as NaN (integer
outputs as 7, an impossible pool argmax) instead of uninitialised memory, so an element a
kernel forgets to write shows up in a comparison with the reference. Tests only.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["new_output", "poisoned_outputs"]

POISON_INT = 7
_poisoned = False


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if _poisoned:
        fill = float("nan") if dtype.is_floating_point else POISON_INT
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def poisoned_outputs():
    global _poisoned
    previous, _poisoned = _poisoned, True
    try:
        yield
    finally:
        _poisoned = previous
