"""CUDA autocast emulated on meta tensors, so that a meta trace has the dtypes and the casts a
bf16 training step has on the GPU.

torch has no autocast for meta tensors (`torch.autocast("meta")` raises), and a meta step with
the model cast to bf16 (what the compile report does) has neither the fp32 master weights nor
the casts autocast inserts. `EmulatedAutocast` is a TorchFunctionMode that applies CUDA
autocast's policy (aten/src/ATen/autocast_mode.cpp, the CUDA lists) at the functions the model
calls:

* lower-precision ops (convolutions, linear, matmul, einsum, mm, bmm, addmm, ...): every
  floating argument on the device that is not float64 is cast to the autocast dtype;
* fp32 ops (exp, log, pow, softmax, log_softmax, losses, norms, sum, cumsum, ...): 16-bit
  floating arguments are cast to float32 (`sum`/`softmax`/`cumsum`/`prod`/`log_softmax`
  instead get dtype=float32, as autocast's fp32_set_opt_dtype does);
* promote ops (cat, stack, addcmul, index_put, ...): arguments cast to the widest floating type.

The casts are ordinary differentiable `Tensor.to` calls, so autograd records them and the
backward casts the gradients back, as under real autocast. As in autocast's cached_cast, the
cast of a float32 leaf that requires grad (a weight) is made once per autocast region and
reused. Ops outside the lists run in the dtype they are given, as under autocast.

lnlatten_fast's fused ops follow autocast themselves (`lnlatten_fast.ops._follow_autocast`,
which asks `torch.is_autocast_enabled(device.type)`, false for meta): `follow_emulation` patches
that one function so that the ops get the autocast dtype under the emulation, as they do on CUDA.
"""

from __future__ import annotations

import contextlib

# CUDA autocast's lists, by the name of the Python-level function or Tensor method the model
# calls (aten names where they are the same).
LOWER_PRECISION = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "prelu", "addmm", "addmv", "addr", "matmul", "__matmul__", "__rmatmul__",
    "einsum", "mm", "mv", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "multi_dot", "linalg_vecdot",
    "vecdot", "scaled_dot_product_attention", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
})
FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "rms_norm", "norm",
    "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss",
    "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    # composites whose pieces are on the fp32 list (cross_entropy = log_softmax + nll_loss)
    "cross_entropy", "cross_entropy_loss",
})
FP32_SET_OPT_DTYPE = frozenset({"prod", "softmax", "log_softmax", "cumprod", "cumsum", "sum",
                                "vector_norm", "matrix_norm"})
PROMOTE = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
                     "index_put", "index_put_", "tensordot", "scatter_add", "cat", "stack"})


def _name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name in ("default", "Tensor", "Scalar") or "." in name:  # an OpOverload: its packet's name
        name = getattr(getattr(func, "overloadpacket", None), "__name__", name)
    return name


class EmulatedAutocast:
    """Context manager: CUDA autocast's policy for tensors on `device_type` (see the module
    docstring). `casts` counts the casts it made (for the report)."""

    def __init__(self, dtype, device_type: str = "meta"):
        self.dtype = dtype
        self.device_type = device_type
        self.casts = 0
        self._mode = None
        self._cache: dict[int, tuple] = {}

    # ---- casting -----------------------------------------------------------------------------
    def _eligible(self, t) -> bool:
        import torch

        return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                and t.device.type == self.device_type)

    def cast(self, t, dtype):
        """`t` as `dtype` the way autocast's cached_cast makes it."""
        import torch

        if not self._eligible(t) or t.dtype == dtype:
            return t
        cacheable = (dtype == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
                     and not t._is_view())
        if cacheable and id(t) in self._cache and self._cache[id(t)][0] is t:
            return self._cache[id(t)][1]
        self.casts += 1
        out = t.to(dtype)
        if cacheable:
            self._cache[id(t)] = (t, out)  # keeps t alive for the region, as autocast's cache does
        return out

    def _map(self, value, dtype):
        if isinstance(value, (list, tuple)):
            return type(value)(self._map(v, dtype) for v in value)
        return self.cast(value, dtype)

    def _widest(self, values):
        import torch

        widest = None
        for v in values:
            if isinstance(v, (list, tuple)):
                w = self._widest(v)
            else:
                w = v.dtype if self._eligible(v) else None
            if w is not None and (widest is None or torch.promote_types(widest, w) == w):
                widest = w
        return widest

    def apply(self, func, args, kwargs):
        """(args, kwargs) as autocast would hand them to `func`."""
        import torch

        name = _name(func)
        if name in LOWER_PRECISION:
            return self._map(args, self.dtype), {k: self._map(v, self.dtype) for k, v in kwargs.items()}
        if name in FP32:
            return self._map(args, torch.float32), {k: self._map(v, torch.float32) for k, v in kwargs.items()}
        if name in FP32_SET_OPT_DTYPE:
            first = args[0] if args else None
            if self._eligible(first) and first.dtype in (torch.float16, torch.bfloat16) and kwargs.get("dtype") is None:
                kwargs = dict(kwargs, dtype=torch.float32)
            return args, kwargs
        if name in PROMOTE:
            widest = self._widest(list(args) + list(kwargs.values()))
            if widest is not None:
                return self._map(args, widest), {k: self._map(v, widest) for k, v in kwargs.items()}
        return args, kwargs

    # ---- the mode ------------------------------------------------------------------------------
    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        emulation = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                args, kwargs = emulation.apply(func, tuple(args), dict(kwargs or {}))
                return func(*args, **kwargs)

        self._mode = _Mode()
        self._mode.__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        self._cache.clear()  # autocast clears its cast cache on leaving the outermost region
        return self._mode.__exit__(*exc)


_ACTIVE: list[EmulatedAutocast] = []


def active() -> EmulatedAutocast | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def follow_emulation():
    """lnlatten_fast.ops._follow_autocast casting to the emulated autocast's dtype while one is
    active, and ops._autocast_dtype naming that dtype (so the nn blocks' input checks accept
    what the emulation casts); each does what it always does otherwise, restored on exit."""
    from lnlatten_fast import ops

    original = ops._follow_autocast
    original_dtype = ops._autocast_dtype

    def autocast_dtype(device):
        emulation = active()
        if emulation is None or device.type != emulation.device_type:
            return original_dtype(device)
        return emulation.dtype

    def follow(device, *tensors):
        emulation = active()
        if emulation is None or device.type != emulation.device_type:
            return original(device, *tensors)
        return tuple(emulation.cast(t, emulation.dtype) if t is not None else t for t in tensors)

    ops._follow_autocast, ops._autocast_dtype = follow, autocast_dtype
    try:
        yield
    finally:
        ops._follow_autocast, ops._autocast_dtype = original, original_dtype


@contextlib.contextmanager
def precision_autocast_emulated(device_type: str = "meta"):
    """Every lnlatten_fast module's `autocast(precision, device)` (training.precision's,
    imported by name) returning the emulation for `device_type` under bf16, restored on exit."""
    import sys

    import torch

    from lnlatten_fast.training import precision as precision_module

    original = precision_module.autocast

    def autocast(precision, device):
        device = torch.device(device)
        if device.type == device_type and precision_module.resolve_precision(precision, device) == "bf16":
            return EmulatedAutocast(torch.bfloat16, device_type)
        return original(precision, device)

    patched = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("lnlatten_fast") and getattr(m, "autocast", None) is original]
    for module in patched:
        module.autocast = autocast
    try:
        yield [m.__name__ for m in patched]
    finally:
        for module in patched:
            module.autocast = original
