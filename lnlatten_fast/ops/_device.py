"""The device guard every kernel launch, native or Triton, runs under."""

from __future__ import annotations

import contextlib

import torch


def launch_guard(tensor: torch.Tensor):
    """Make `tensor`'s GPU the current device for a launch.

    CUDA launches (the extension's and Triton's alike) go to the *current* device, not to the
    one the tensors live on: without this guard a model on cuda:1 would launch on GPU 0.
    """
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
