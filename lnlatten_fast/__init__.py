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
from .ops import dispatch

__version__ = "0.1.0"


class Backends(dict):
    """{backend: {device type: BackendStatus}}: whether each op implementation runs here, and
    why not. Shown (repr and str) as the table `python -m lnlatten_fast.info` prints."""

    HEADER = "backend   dev  ok   why"  # the columns of BackendStatus.__str__

    def __repr__(self) -> str:
        return "\n".join([self.HEADER, *(str(status) for statuses in self.values() for status in statuses.values())])

    __str__ = __repr__


def backends() -> Backends:
    """Every backend (and `auto`) on every device type: usable here or not, and why."""
    return Backends(dispatch.backends())

__all__ = [
    "LNLConfig",
    "PatchGeometry",
    "LNLAttenNet",
    "LNLOutput",
    "lnl_loss",
    "l2_penalty",
    "count_parameters",
    "backends",
    "Backends",
    "ops",
    "nn",
    "BACKENDS",
    "VARIANTS",
    "__version__",
]
