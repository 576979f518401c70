"""What every Triton op file shares: the import fallback, availability, accumulator dtype,
block-size rounding and the interpreter's bf16 workaround.

Triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors: its interpreter runs each
program in NumPy (slow; for tests). `triton.jit` picks the interpreter when a kernel is
decorated, so the variable must be set before lnlatten_fast is imported.
"""

from __future__ import annotations

import dataclasses
import os

import torch

# triton is an optional extra: a CPU-only install leaves it out (it is large, and only the
# GPU kernels and their test interpreter need it).
INSTALL_HINT = "pip install 'lnlatten_fast[triton]'"

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR = None
except ImportError as _error:  # the package still imports; availability() says why
    if isinstance(_error, ModuleNotFoundError) and _error.name == "triton":
        IMPORT_ERROR = f"not installed ({INSTALL_HINT})"
    else:  # installed, but broken: its own message says what is wrong
        IMPORT_ERROR = f"the triton package could not be imported ({_error})"

    class _NoTriton:
        """Stands in for triton / triton.language so kernel definitions still parse:
        `@triton.jit` leaves the function alone and `tl.constexpr` annotations become None."""

        constexpr = None
        __version__ = None

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()

__all__ = [
    "triton", "tl", "IMPORT_ERROR", "INSTALL_HINT", "INTERPRETED", "INTERPRETER_HINT",
    "availability", "accumulator", "next_power_of_2", "widen_for_interpreter",
    "LaunchPlan", "note_launch", "multiprocessor_count", "index_dtype",
]

# Whether the kernels were decorated for the interpreter (read at import, as triton.jit does).
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETER_HINT = (
    "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on CPU (slow, for tests)"
)


def availability(device_type: str) -> tuple[bool, str]:
    if IMPORT_ERROR is not None:
        return False, IMPORT_ERROR
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        if INTERPRETED:
            return True, f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1: slow, for tests)"
        return True, f"Triton {triton.__version__} kernels on CUDA"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False, INTERPRETER_HINT
        if not INTERPRETED:
            return False, (
                "TRITON_INTERPRET=1 was set after lnlatten_fast's Triton kernels were decorated; "
                "set it before importing lnlatten_fast"
            )
        return True, f"Triton {triton.__version__} interpreter on CPU (TRITON_INTERPRET=1; slow, for tests)"
    return False, f"no Triton kernels for device type {device_type!r}"


def accumulator(dtype: torch.dtype):
    """The kernels accumulate in float32, float64 for float64 inputs."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def next_power_of_2(n: int, low: int = 16, high: int | None = None) -> int:
    """Block sizes: the next power of two of n, at least `low` (16 keeps tl.dot legal), at most
    `high`."""
    v = max(low, 1 << max(0, int(n) - 1).bit_length())
    return v if high is None else min(v, high)


def index_dtype(*tensors):
    """Integer type for per-row element offsets: int32 when every offset into these tensors
    fits (half the registers of int64, which the unrolled taps' row offsets would otherwise
    take), else int64."""
    largest = max(sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) for t in tensors)
    return tl.int32 if largest < 2**31 - 1 else tl.int64


def widen_for_interpreter(*tensors):
    """The interpreter's bf16 tl.dot is wrong (NumPy has no bfloat16: it multiplies the raw
    bits). On CPU, bf16 operands are widened to fp32 (exactly); the kernels accumulate in fp32
    as they do on the GPU, and the wrappers round each result once, as the GPU kernels do."""
    return tuple(
        t.float() if t is not None and t.device.type == "cpu" and t.dtype == torch.bfloat16 else t
        for t in tensors
    )


def multiprocessor_count(device: torch.device) -> int:
    """SMs of the device the kernels launch on (the interpreter counts as one: it runs
    programs one after the other)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# ---- launch accounting (bench/compile_report.py's estimates) -------------------------------
@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """The work of one kernel launch, as its host wrapper planned it.

    flops: what the math needs (2 x multiply-adds); issued_flops: what the tiles compute,
    masked padding included. rows / row_slots: useful GEMM rows (the MMA's M axis) and the
    rows the launched tiles hold. bytes: compulsory global traffic (each input read once,
    each output written once).
    """

    kernel: str
    programs: int
    flops: int
    issued_flops: int
    rows: int
    row_slots: int
    bytes: int


# Called with each LaunchPlan when set; None (the default) costs one comparison per launch.
launch_listener = None


def note_launch(make_plan) -> None:
    """Report a launch to `launch_listener`; make_plan() only runs when one is installed."""
    if launch_listener is not None:
        launch_listener(make_plan())
