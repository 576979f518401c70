"""The `native` backend: the compiled extension `lnlatten_fast._C` plus vendor convolutions.

`_C` holds C++ (OpenMP) kernels for patch extraction, overlap-add and L1 non-local attention
(forward and backward), and their CUDA versions when it was built with a CUDA compiler. It is
torch-free: it takes data pointers, sizes, strides and a stream handle, so each op here owns
its output allocation. The 3x3 convolutions of this backend are the vendor library's grouped
convolution (oneDNN on CPU, cuDNN on CUDA) over patches extracted by `_C`.

Each op is a `torch.library.custom_op` with a fake implementation and a registered backward,
so `torch.compile(fullgraph=True)` traces through it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

from ..geometry import PatchGeometry
from . import _device
from ._adjoint import register_patch_adjoints
from .reference import L1_NORM_EPS
from .stacked import stacked_conv2d

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

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_CPU_DTYPES = (torch.float32, torch.float64)


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


def _launch(name: str, like: torch.Tensor, *args) -> None:
    """Run `_C`'s kernel `name` for `like`'s device, under that device's guard (the CUDA
    kernels take that device's current stream as their last argument)."""
    with _device.launch_guard(like):
        if like.device.type == "cuda":
            getattr(_C, f"{name}_cuda")(*args, torch.cuda.current_stream(like.device).cuda_stream)
        else:
            getattr(_C, f"{name}_cpu")(*args)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # The CPU kernels are float32/float64 only; half types are widened there and narrowed back.
    if t.device.type == "cpu" and t.dtype not in _CPU_DTYPES:
        return torch.float32
    return t.dtype


# ---- patch extraction and its adjoint --------------------------------------------------
@torch.library.custom_op("lnlatten_fast::native_extract_patches", mutates_args=())
def _extract(f9: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, channels, height, width = f9.shape
    work = f9.to(_compute_dtype(f9))
    out = torch.empty(batch, grid * grid, channels, patch, patch, dtype=work.dtype, device=f9.device)
    if out.numel():
        _launch("extract_patches", work, _DTYPE_CODE[work.dtype], work.data_ptr(), out.data_ptr(),
                batch, channels, height, width, *work.stride(), grid, patch, stride)
    return out.to(f9.dtype)


@_extract.register_fake
def _(f9, grid, patch, stride):
    return f9.new_empty(f9.shape[0], grid * grid, f9.shape[1], patch, patch)


@torch.library.custom_op("lnlatten_fast::native_overlap_add", mutates_args=())
def _overlap_add(patches: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, _, channels = patches.shape[:3]
    size = (grid - 1) * stride + patch
    work = patches.to(_compute_dtype(patches)).contiguous()
    out = torch.empty(batch, channels, size, size, dtype=work.dtype, device=patches.device)
    if out.numel():
        _launch("overlap_add", work, _DTYPE_CODE[work.dtype], work.data_ptr(), out.data_ptr(),
                batch, channels, size, size, grid, patch, stride)
    return out.to(patches.dtype)


register_patch_adjoints(_extract, _overlap_add)


def extract_patches(f9: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    return _extract(f9, geom.grid, geom.patch, geom.stride)


def overlap_add(patches: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    return _overlap_add(patches, geom.grid, geom.patch, geom.stride)


# ---- L1 non-local attention -------------------------------------------------------------
@torch.library.custom_op("lnlatten_fast::native_l1_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    dtype = _compute_dtype(q)
    out_dtype = q.dtype
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    s = torch.empty_like(q)
    w = q.new_empty(batch, regions)
    if batch:
        _launch("l1_attention_forward", q, _DTYPE_CODE[dtype], q.data_ptr(), k.data_ptr(),
                v.data_ptr(), s.data_ptr(), w.data_ptr(), batch, regions, dim, L1_NORM_EPS)
    return s.to(out_dtype), w.to(out_dtype)


# Fakes allocate like the real ops: contiguous whatever the inputs' strides (empty_like would
# copy a transposed q's strides, and inductor then mis-plans the real op's output).
@_attention.register_fake
def _(q, k, v):
    return q.new_empty(q.shape), q.new_empty(q.shape[0], q.shape[1])


@torch.library.custom_op("lnlatten_fast::native_l1_attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_s: torch.Tensor, grad_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    out_dtype, dtype = q.dtype, _compute_dtype(q)
    q, k, v, grad_s, grad_w = (t.to(dtype).contiguous() for t in (q, k, v, grad_s, grad_w))
    grads = [torch.empty_like(q) for _ in range(3)]
    if batch:
        _launch("l1_attention_backward", q, _DTYPE_CODE[dtype], q.data_ptr(), k.data_ptr(),
                v.data_ptr(), grad_s.data_ptr(), grad_w.data_ptr(), *(g.data_ptr() for g in grads),
                batch, regions, dim, L1_NORM_EPS)
    return tuple(g.to(out_dtype) for g in grads)


@_attention_backward.register_fake
def _(q, k, v, grad_s, grad_w):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attention_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _attention_grad(ctx, grad_s, grad_w):
    q, k, v = ctx.saved_tensors
    # An output that took no part in the loss arrives as None.
    grad_s = torch.zeros_like(q) if grad_s is None else grad_s
    grad_w = q.new_zeros(q.shape[:2]) if grad_w is None else grad_w
    return _attention_backward(q, k, v, grad_s.to(q.dtype), grad_w.to(q.dtype))


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


def l1_nonlocal_attention(q, k, v):
    return _attention(q, k, v)


# ---- convolutions: the vendor's grouped conv, one group per patch ------------------------
def grouped_conv3x3(h, weight, bias, relu: bool = True, pool: bool = False):
    y = stacked_conv2d(h, weight, bias, padding=1)
    if relu:
        y = F.relu(y)
    if pool:
        y = F.max_pool2d(y.flatten(0, 1), 2).unflatten(0, y.shape[:2])
    return y


def patch_conv3x3(f9, weight, bias, geom: PatchGeometry, relu: bool = True):
    return grouped_conv3x3(extract_patches(f9, geom), weight, bias, relu=relu)
