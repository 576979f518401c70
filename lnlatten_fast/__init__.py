"""lnlatten_fast: a performance-engineered PyTorch training core for LNLAttenNet.

    import lnlatten_fast as lf
    model = lf.LNLAttenNet(lf.LNLConfig())          # the paper's network
    out = model(x)                                   # out.logits, out.nonlocal_weights, out.local_weights
    lf.backends()                                    # which op implementations run here, and why not
"""

from . import nn, ops
from .config import BACKENDS, VARIANTS, LNLConfig
from .geometry import PatchGeometry
from .model import LNLAttenNet, LNLOutput, count_parameters, l2_penalty, lnl_loss
from .ops.dispatch import backends

__version__ = "0.1.0"

__all__ = [
    "LNLConfig",
    "PatchGeometry",
    "LNLAttenNet",
    "LNLOutput",
    "lnl_loss",
    "l2_penalty",
    "count_parameters",
    "backends",
    "ops",
    "nn",
    "BACKENDS",
    "VARIANTS",
    "__version__",
]
