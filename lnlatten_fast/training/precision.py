"""Which arithmetic a run uses: fp32, or bf16 autocast with fp32 master weights.

auto: bf16 autocast on CUDA (the GPU's fast path), fp32 on CPU (CPU bf16 is emulated and slower
there); "bf16" on CPU runs the GPU's precision path under CPU autocast.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ParameterError

__all__ = ["PRECISIONS", "check_precision", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what `precision` means on `device`."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ParameterError("precision", f"bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast (master weights and gradients stay fp32), or nothing for fp32.

    Only "auto" is resolved here: a resolved "bf16" or "fp32" asks the device nothing, so a
    compiled graph can enter it (torch.cuda.is_bf16_supported is not traceable); whoever
    resolved it checked the device then."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    check_precision(precision)
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
