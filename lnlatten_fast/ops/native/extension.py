"""The compiled extension `lnlatten_fast._C`: loading it, what it can run on, launching it.

`_C` is torch-free: its kernels take data pointers, sizes, element strides, a dtype code and
(CUDA) a stream handle, so the ops in this package own their output allocation.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

import torch

from .. import _device

__all__ = ["IMPORT_ERROR", "availability", "build_report", "launch", "compute_dtype", "dtype_code"]


def _installed_extension_path():
    """`_C` of the pip-installed copy, for code run from a source checkout (`python -m ...`
    in the repository imports the checkout, which holds no build)."""
    # Every match, not just the first: a checkout may hold a build's egg-info without the module.
    for dist in importlib.metadata.distributions(name="lnlatten_fast"):
        for file in dist.files or []:
            if file.parent.name == "lnlatten_fast" and any(
                file.name == "_C" + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES
            ):
                return file.locate()
    return None


def _load_extension():
    try:
        return importlib.import_module("lnlatten_fast._C"), None
    except ImportError as error:
        path = _installed_extension_path()
        if path is None or not os.path.exists(path):
            return None, f"the compiled extension lnlatten_fast._C could not be loaded ({error})"
    spec = importlib.util.spec_from_file_location("lnlatten_fast._C", path)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        return None, f"the compiled extension at {path} could not be loaded ({error})"
    sys.modules["lnlatten_fast._C"] = module
    return module, None


# Without the build the package stays usable on `reference`; backends() says why.
_C, IMPORT_ERROR = _load_extension()

# torch dtype -> _C's dtype code, and the dtypes its CPU kernels take: both from _C itself
# (csrc/dtype_codes.h is the one list).
if _C is not None:
    _DTYPE_CODE = {getattr(torch, name): code for name, code in _C.DTYPE_CODES.items()}
    _CPU_DTYPES = tuple(getattr(torch, name) for name in _C.CPU_DTYPES)
else:
    _DTYPE_CODE, _CPU_DTYPES = {}, ()


def dtype_code(dtype: torch.dtype) -> int:
    return _DTYPE_CODE[dtype]


def availability(device_type: str) -> tuple[bool, str]:
    if _C is None:
        return False, IMPORT_ERROR
    if device_type == "cpu":
        info = _C.build_info()
        threads = f"OpenMP, {_C.openmp_threads()} threads" if info["openmp"] else "no OpenMP"
        return True, f"C++ CPU kernels ({threads})"
    if device_type == "cuda":
        if not _C.has_cuda():
            return False, "lnlatten_fast._C was built without CUDA (no CUDA compiler at build time, or LNLATTEN_CUDA=0)"
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        # _C links its own (static) CUDA runtime: torch's can work where it cannot, e.g. on a
        # driver older than the CUDA that _C was built with.
        devices = _C.cuda_device_count()
        if devices < 1:
            cause = f"cudaError {-devices}" if devices < 0 else "0 devices"
            return False, (
                f"lnlatten_fast._C's CUDA runtime sees no device ({cause}; built for CUDA "
                f"{_C.cuda_runtime_version()}, driver {_C.cuda_driver_version()}): is the driver "
                "older than that CUDA?"
            )
        return True, f"CUDA kernels (arch {_C.build_info()['cuda_arch']})"
    return False, f"no native kernels for device type {device_type!r}"


def build_report() -> list[str]:
    """What `python -m lnlatten_fast.info` shows of the build: where `_C` is, how it was built."""
    if _C is None:
        return [f"native extension: not loaded ({IMPORT_ERROR})"]
    return [f"native extension: {_C.__file__}", f"  build: {_C.build_info()}"]


def launch(name: str, like: torch.Tensor, *args) -> None:
    """Run `_C`'s kernel `name` for `like`'s device, under that device's guard (the CUDA
    kernels take that device's current stream as their last argument)."""
    with _device.launch_guard(like):
        if like.device.type == "cuda":
            getattr(_C, f"{name}_cuda")(*args, torch.cuda.current_stream(like.device).cuda_stream)
        else:
            getattr(_C, f"{name}_cpu")(*args)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    # The CPU kernels are float32/float64 only; half types are widened there and narrowed back.
    if t.device.type == "cpu" and t.dtype not in _CPU_DTYPES:
        return torch.float32
    return t.dtype
