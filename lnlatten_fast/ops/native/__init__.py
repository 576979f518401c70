"""The `native` backend: the compiled extension `lnlatten_fast._C` plus vendor convolutions.

`_C` holds C++ (OpenMP) kernels for patch extraction, overlap-add and L1 non-local attention
(forward and backward), and their CUDA versions when it was built with a CUDA compiler. Each
op is a `torch.library.custom_op` with a fake implementation and a registered backward, so
`torch.compile(fullgraph=True)` traces through it. The 3x3 convolutions are the vendor
library's grouped convolution over patches extracted by `_C`.
"""

from __future__ import annotations

from ..registry import register_backend
from . import attention, conv, patches  # noqa: F401  (importing registers the ops)
from .extension import IMPORT_ERROR, availability, build_report

__all__ = ["IMPORT_ERROR", "availability", "build_report"]

register_backend("native", availability, auto_rank={"cpu": 0, "cuda": 1})
