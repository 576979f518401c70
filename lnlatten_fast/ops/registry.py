"""The op x backend grid: which implementation of which op runs on which device type.

Every implementation registers itself here, once, next to its kernels:

    @register("l1_nonlocal_attention", "native")
    def l1_nonlocal_attention(q, k, v): ...

and every backend registers how to tell whether it can run on a device type. Dispatch,
`lnlatten_fast.backends()`, `python -m lnlatten_fast.info`, the benchmarks' provider lists
and the contract tests in tests/ops/ are all read off this table, so adding an op or a
backend is a registration plus its kernels, and it is then tested like the others.

Backend names are the public vocabulary of `LNLConfig.backend` (`config.BACKENDS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import BACKENDS

__all__ = [
    "OPS",
    "DEVICE_TYPES",
    "Backend",
    "register",
    "register_backend",
    "implementation",
    "implementations",
    "registered_backends",
    "backend",
]

# The public ops, in the order they appear in lnlatten_fast.ops.
OPS = ("extract_patches", "overlap_add", "patch_conv3x3", "grouped_conv3x3", "l1_nonlocal_attention")
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Backend:
    """A backend: how to ask whether it runs on a device type, and where `auto` ranks it.

    `availability(device_type) -> (usable, reason)`; `auto_rank` maps a device type to the
    backend's place in `auto`'s order there (lower first; absent: `auto` never picks it).
    """

    name: str
    availability: Callable[[str], tuple[bool, str]]
    auto_rank: dict


_BACKENDS: dict[str, Backend] = {}
_IMPLEMENTATIONS: dict[tuple[str, str], Callable] = {}


def register_backend(name: str, availability: Callable[[str], tuple[bool, str]], auto_rank: dict) -> None:
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"backend {name!r} is not declared in lnlatten_fast.config.BACKENDS {BACKENDS}")
    _BACKENDS[name] = Backend(name, availability, dict(auto_rank))


def register(op: str, backend_name: str):
    """Decorator: `fn` implements `op` on `backend_name` (inputs arrive validated)."""
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {OPS}")

    def add(fn: Callable) -> Callable:
        if (op, backend_name) in _IMPLEMENTATIONS:
            raise ValueError(f"{op} on {backend_name} is registered twice")
        _IMPLEMENTATIONS[(op, backend_name)] = fn
        return fn

    return add


def implementation(op: str, backend_name: str) -> Callable:
    return _IMPLEMENTATIONS[(op, backend_name)]


def implementations(op: str | None = None) -> list[tuple[str, str]]:
    """Every registered (op, backend), or those of one op, in op then backend order."""
    keys = [key for key in _IMPLEMENTATIONS if op is None or key[0] == op]
    return sorted(keys, key=lambda key: (OPS.index(key[0]), BACKENDS.index(key[1])))


def registered_backends() -> tuple[str, ...]:
    return tuple(name for name in BACKENDS if name in _BACKENDS)


def backend(name: str) -> Backend:
    return _BACKENDS[name]
