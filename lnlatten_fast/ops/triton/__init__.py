"""The `triton` backend: fused Triton kernels for every op.

- patches.py: patch extraction and overlap-add (its adjoint, a deterministic gather);
- conv3x3.py / conv3x3_backward.py: the SimpleNet 3x3 convs as implicit GEMMs that read the
  windows straight from F9, with bias, ReLU and 2x2 max-pool fused, and their gradients;
- attention.py: the L1 non-local attention, one launch forward and one backward;
- _common.py: what they share (import fallback, availability, block sizes, interpreter
  workaround).

Each op is a `torch.library.custom_op` with a fake and a registered backward made of custom
ops, so `torch.compile(fullgraph=True)` traces it. Triton runs on CUDA tensors, or on CPU
tensors under TRITON_INTERPRET=1 (its interpreter: slow, for tests).
"""

from __future__ import annotations

from ..registry import register_backend
from . import attention, conv3x3, conv3x3_backward, patches  # noqa: F401  (importing registers the ops)
from ._common import IMPORT_ERROR, availability

__all__ = ["IMPORT_ERROR", "availability"]

register_backend("triton", availability, auto_rank={"cuda": 0})
