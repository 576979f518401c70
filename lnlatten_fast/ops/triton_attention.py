"""The `triton` backend's L1 non-local attention: one fused kernel forward, one backward.

Op (SPEC §1), per batch element b, with Q, K, V the (M, D) slices of q, k, v:

    R~ = Q Kᵀ (M x M)    L_i = Σ_j |R~_ij|    d_i = max(L_i, 1e-12)    R = R~ / d
    w_j = (1/M) Σ_i R_ij  (column mean, (B, M))    s = R V  ((B, M, D))

Backward, given grad_s (B, M, D) and grad_w (B, M):

    gR_ij  = Σ_t grad_s[i,t] V[j,t] + grad_w[j] / M          grad_v = Rᵀ grad_s
    c_i    = Σ_k gR_ik R~_ik
    gR~_ij = gR_ij / d_i − [L_i >= eps] · sign(R~_ij) · c_i / d_i²
    grad_q = gR~ K                                             grad_k = gR~ᵀ Q

Layout (Liger-Kernel style, top to bottom): forward kernel, backward kernel, host wrappers as
`torch.library.custom_op`s (so `torch.compile(fullgraph=True)` traces through them), autograd
registration, public entry points.

One program per batch element (grid = (B,)). The whole M x M relation matrix of one image
lives in registers (BLOCK_M = next_power_of_2(max(M, 16)) so every `tl.dot` dimension is at
least 16; rows/columns >= M are masked to zero) and D is walked in BLOCK_D chunks:

- forward: pass 1 over D accumulates R~ = Σ tl.dot(q_chunk, k_chunkᵀ); R and w are formed
  in registers and w is stored; pass 2 over D stores s_chunk = tl.dot(R, v_chunk).
- backward: pass 1 over D recomputes R~ and accumulates grad_s Vᵀ; R, gR, c, gR~ are formed
  in registers; pass 2 over D stores grad_q, grad_k and grad_v chunk by chunk.

Precision: every product accumulates in float32 (float64 for float64 inputs). Products of two
loaded operands (Q Kᵀ, grad_s Vᵀ) take the inputs in their own dtype: a float16/bfloat16
product is exact in float32, so this equals the reference's upcast-then-multiply up to
summation order, and uses tensor cores on a GPU. Products with a computed M x M matrix
(R V, Rᵀ grad_s, gR~ K, gR~ᵀ Q) upcast the loaded chunk to the accumulator type instead of
rounding R or gR~ down to half precision: gR~ can exceed the float16 range (1/d_i is large
for a row with small L1 norm) and the reference keeps R in float32. All float32 dots use
`input_precision="ieee"` (no TF32), so float32 results match the reference to ~1e-6.
At these sizes the dots are nowhere near the bottleneck (see below), so the upcast is free.

Cost at paper shape (B = 64, M = 16, D = 512, bfloat16; one (B, M, D) tensor = 1 MiB):

- forward FLOPs: Q Kᵀ and R V are 2·M²·D = 0.26 MFLOP each per image, 2·64·0.26 = 33.6 MFLOP
  (the M² normalisation is noise). Bytes: read q, k, v (3 MiB), write s (1 MiB) and w
  (2 KiB): 4.2 MB. Intensity 8 FLOP/B against the GPU's ridge point of ~990e12 / 4.8e12 =
  206 FLOP/B: memory bound by ~25x.
- backward FLOPs: five M x M x D products (recomputed Q Kᵀ, grad_s Vᵀ, gR~ K, gR~ᵀ Q,
  Rᵀ grad_s): 5·2·M²·D·B = 83.9 MFLOP. Bytes: read q, k, v, grad_s (4 MiB) and grad_w, write
  grad_q, grad_k, grad_v (3 MiB): 7.3 MB compulsory. Pass 2 re-reads the four inputs; at
  4 MiB they stay in the 50+ MB L2, so HBM traffic stays ~7.3 MB.
- floors on an H100/H200-class GPU (≈ 4.8 TB/s HBM, ≈ 990 dense bf16 TFLOP/s):
  forward: memory 4.2 MB / 4.8 TB/s = 0.87 µs, compute 33.6 MFLOP / 990 TFLOP/s = 0.03 µs;
  backward: memory 7.3 MB / 4.8 TB/s = 1.5 µs, compute 0.08 µs (even at the ~67 TFLOP/s
  of non-tensor-core float32, used here for the upcast products: 50 MFLOP -> 0.75 µs,
  still under the memory floor).
  So the op is memory bound with a ~0.9 µs (forward) / ~1.5 µs (backward) floor, and in
  practice launch bound: one kernel launch costs ~2-5 µs on the GPU and Triton's Python
  launch path ~10-20 µs of CPU time (CUDA graphs / torch.compile hide the latter). Fusing
  everything into one launch per direction is therefore the main win over the reference's
  ~6 forward / ~15 backward kernels. With grid = (B,) = 64 programs only about half of the
  132 SMs are busy; that matters little at this size.

Block sizes are fixed constants (no autotuning: the interpreter cannot autotune and a single
config needs none). BLOCK_D = 64 (smaller for tiny D), num_warps = 4. GPU tuning of these
is UNMEASURED: no GPU was available when this was written.

Under TRITON_INTERPRET=1 the kernels run on CPU tensors through Triton's NumPy interpreter
(slow; for tests). The variable must be set before this module is imported, since
`triton.jit` picks the interpreter at decoration time. The interpreter's tl.dot cannot take
bfloat16 (it multiplies the raw bits), so there bf16 operands are upcast first
(`_upcast_operands`); float64 inputs work there (float64 accumulation) and should compile for
a GPU too, but that is unmeasured.
"""

from __future__ import annotations

import os

import torch

from . import _device
from .reference import L1_NORM_EPS

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR = None
except ImportError as error:  # the package stays importable; availability() says why
    triton = None
    tl = None
    IMPORT_ERROR = f"the triton package could not be imported ({error})"

# Whether the kernels below were decorated for Triton's CPU interpreter (read at import, as
# triton.jit does).
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Test hook: when True, outputs are allocated filled with NaN instead of torch.empty, so an
# element a kernel forgot to write shows up in a comparison. Never set outside tests.
_POISON_OUTPUTS = False

# Fixed launch configuration (GPU tuning unmeasured, see the module docstring). Tests lower
# MAX_BLOCK_D to walk small D in several chunks.
MAX_BLOCK_D = 64
NUM_WARPS = 4


def _block_sizes(regions: int, dim: int) -> tuple[int, int]:
    """BLOCK_M covers all M regions (>= 16 for tl.dot); BLOCK_D is one chunk of D (16..64)."""
    block_m = triton.next_power_of_2(max(regions, 16))
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(max(dim, 16)))
    return block_m, block_d


if triton is not None:

    # ---- forward kernel ------------------------------------------------------------------
    @triton.jit
    def _l1_attention_forward_kernel(
        q_ptr, k_ptr, v_ptr, s_ptr, w_ptr,
        M, D,
        stride_qb, stride_qm, stride_qd,
        stride_kb, stride_km, stride_kd,
        stride_vb, stride_vm, stride_vd,
        stride_sb, stride_sm, stride_sd,
        stride_wb, stride_wm,
        EPS: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        UPCAST_OPERANDS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)  # int64: b * stride may pass 2^31
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < M
        # eps in the accumulator dtype (a float argument would arrive rounded to float32).
        eps = tl.full((BLOCK_M,), EPS, ACC_DTYPE)
        q_base = q_ptr + b * stride_qb + rows[:, None] * stride_qm
        k_base = k_ptr + b * stride_kb + rows[:, None] * stride_km
        v_base = v_ptr + b * stride_vb + rows[:, None] * stride_vm
        s_base = s_ptr + b * stride_sb + rows[:, None] * stride_sm

        # Pass 1: R~ = Q Kᵀ. Padded rows of Q and K load as 0, so R~ is 0 outside M x M.
        rel = tl.zeros((BLOCK_M, BLOCK_M), dtype=ACC_DTYPE)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            mask = row_ok[:, None] & (d < D)[None, :]
            q = tl.load(q_base + d[None, :] * stride_qd, mask=mask, other=0.0)
            k = tl.load(k_base + d[None, :] * stride_kd, mask=mask, other=0.0)
            if UPCAST_OPERANDS:
                q, k = q.to(ACC_DTYPE), k.to(ACC_DTYPE)
            rel = tl.dot(q, tl.trans(k), rel, input_precision="ieee", out_dtype=ACC_DTYPE)

        # Row L1 normalisation (F.normalize(p=1, eps=1e-12)) and the column mean w.
        denom = tl.maximum(tl.sum(tl.abs(rel), axis=1), eps)
        r = rel / denom[:, None]  # padded rows and columns stay 0
        w = tl.sum(r, axis=0) / M  # divide (not * 1/M): exact in float64 too
        tl.store(w_ptr + b * stride_wb + rows * stride_wm, w.to(w_ptr.dtype.element_ty), mask=row_ok)

        # Pass 2: s = R V, chunk by chunk (V upcast: R stays in the accumulator type).
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            mask = row_ok[:, None] & (d < D)[None, :]
            v = tl.load(v_base + d[None, :] * stride_vd, mask=mask, other=0.0).to(ACC_DTYPE)
            s = tl.dot(r, v, input_precision="ieee", out_dtype=ACC_DTYPE)
            tl.store(s_base + d[None, :] * stride_sd, s.to(s_ptr.dtype.element_ty), mask=mask)

    # ---- backward kernel -----------------------------------------------------------------
    @triton.jit
    def _l1_attention_backward_kernel(
        q_ptr, k_ptr, v_ptr, gs_ptr, gw_ptr, gq_ptr, gk_ptr, gv_ptr,
        M, D,
        stride_qb, stride_qm, stride_qd,
        stride_kb, stride_km, stride_kd,
        stride_vb, stride_vm, stride_vd,
        stride_gsb, stride_gsm, stride_gsd,
        stride_gwb, stride_gwm,
        stride_ob, stride_om, stride_od,  # grad_q, grad_k, grad_v share one layout
        EPS: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        UPCAST_OPERANDS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < M
        # eps in the accumulator dtype (a float argument would arrive rounded to float32).
        eps = tl.full((BLOCK_M,), EPS, ACC_DTYPE)
        q_base = q_ptr + b * stride_qb + rows[:, None] * stride_qm
        k_base = k_ptr + b * stride_kb + rows[:, None] * stride_km
        v_base = v_ptr + b * stride_vb + rows[:, None] * stride_vm
        gs_base = gs_ptr + b * stride_gsb + rows[:, None] * stride_gsm
        out_offset = b * stride_ob + rows[:, None] * stride_om

        # Pass 1: recompute R~ = Q Kᵀ and accumulate grad_s Vᵀ.
        rel = tl.zeros((BLOCK_M, BLOCK_M), dtype=ACC_DTYPE)
        g_rel = tl.zeros((BLOCK_M, BLOCK_M), dtype=ACC_DTYPE)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            mask = row_ok[:, None] & (d < D)[None, :]
            q = tl.load(q_base + d[None, :] * stride_qd, mask=mask, other=0.0)
            k = tl.load(k_base + d[None, :] * stride_kd, mask=mask, other=0.0)
            v = tl.load(v_base + d[None, :] * stride_vd, mask=mask, other=0.0)
            gs = tl.load(gs_base + d[None, :] * stride_gsd, mask=mask, other=0.0)
            if UPCAST_OPERANDS:
                q, k, v, gs = q.to(ACC_DTYPE), k.to(ACC_DTYPE), v.to(ACC_DTYPE), gs.to(ACC_DTYPE)
            rel = tl.dot(q, tl.trans(k), rel, input_precision="ieee", out_dtype=ACC_DTYPE)
            g_rel = tl.dot(gs, tl.trans(v), g_rel, input_precision="ieee", out_dtype=ACC_DTYPE)

        # The M x M part, all in registers.
        l1 = tl.sum(tl.abs(rel), axis=1)
        denom = tl.maximum(l1, eps)
        r = rel / denom[:, None]
        gw = tl.load(gw_ptr + b * stride_gwb + rows * stride_gwm, mask=row_ok, other=0.0)
        g_r = g_rel + gw.to(ACC_DTYPE)[None, :] / M  # gR = grad_s Vᵀ + grad_w / M
        # Keep padded rows at 0: grad_w/M there would be divided by eps = 1e-12 below.
        g_r = tl.where(row_ok[:, None] & row_ok[None, :], g_r, 0.0)
        c = tl.sum(g_r * rel, axis=1)
        sign = tl.where(rel > 0, 1.0, tl.where(rel < 0, -1.0, 0.0)).to(ACC_DTYPE)
        # d(max(L, eps))/dL = [L >= eps], as clamp_min's backward in torch.
        # (c / d) / d, not c / (d * d): d * d overflows once d passes ~1.8e19 in float32.
        through_norm = tl.where(l1 >= eps, (c / denom) / denom, 0.0)
        g_rel = g_r / denom[:, None] - sign * through_norm[:, None]  # gR~

        # Pass 2: grad_q = gR~ K, grad_k = gR~ᵀ Q, grad_v = Rᵀ grad_s, chunk by chunk.
        g_rel_t = tl.trans(g_rel)
        r_t = tl.trans(r)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            mask = row_ok[:, None] & (d < D)[None, :]
            q = tl.load(q_base + d[None, :] * stride_qd, mask=mask, other=0.0).to(ACC_DTYPE)
            k = tl.load(k_base + d[None, :] * stride_kd, mask=mask, other=0.0).to(ACC_DTYPE)
            gs = tl.load(gs_base + d[None, :] * stride_gsd, mask=mask, other=0.0).to(ACC_DTYPE)
            out = out_offset + d[None, :] * stride_od
            gq = tl.dot(g_rel, k, input_precision="ieee", out_dtype=ACC_DTYPE)
            tl.store(gq_ptr + out, gq.to(gq_ptr.dtype.element_ty), mask=mask)
            gk = tl.dot(g_rel_t, q, input_precision="ieee", out_dtype=ACC_DTYPE)
            tl.store(gk_ptr + out, gk.to(gk_ptr.dtype.element_ty), mask=mask)
            gv = tl.dot(r_t, gs, input_precision="ieee", out_dtype=ACC_DTYPE)
            tl.store(gv_ptr + out, gv.to(gv_ptr.dtype.element_ty), mask=mask)

    _ACC_DTYPE = {
        torch.float32: tl.float32,
        torch.float16: tl.float32,
        torch.bfloat16: tl.float32,
        torch.float64: tl.float64,
    }


# ---- host wrappers ----------------------------------------------------------------------
def _upcast_operands(dtype: torch.dtype) -> bool:
    # Triton's interpreter keeps bfloat16 as raw uint16 bits and its tl.dot multiplies those
    # bits as integers (fp16 is fine), so under the interpreter bf16 operands are upcast to
    # float32 first. Compiled GPU kernels take bf16 into tl.dot directly (tensor cores).
    return _INTERPRETED and dtype == torch.bfloat16


def _new_output(shape, like: torch.Tensor) -> torch.Tensor:
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


@torch.library.custom_op("lnlatten_fast::triton_l1_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    s = _new_output((batch, regions, dim), q)
    w = _new_output((batch, regions), q)
    if batch == 0:
        return s, w
    block_m, block_d = _block_sizes(regions, dim)
    with _device.launch_guard(q):
        _l1_attention_forward_kernel[(batch,)](
            q, k, v, s, w,
            regions, dim,
            *q.stride(), *k.stride(), *v.stride(), *s.stride(), *w.stride(),
            EPS=L1_NORM_EPS, ACC_DTYPE=_ACC_DTYPE[q.dtype], UPCAST_OPERANDS=_upcast_operands(q.dtype),
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=NUM_WARPS,
        )
    return s, w


# Fakes allocate like the real ops: contiguous, whatever the inputs' strides.
@_attention.register_fake
def _(q, k, v):
    return q.new_empty(q.shape), q.new_empty(q.shape[0], q.shape[1])


@torch.library.custom_op("lnlatten_fast::triton_l1_attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_s: torch.Tensor, grad_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    grad_s, grad_w = grad_s.to(q.dtype), grad_w.to(q.dtype)
    grads = [_new_output((batch, regions, dim), q) for _ in range(3)]
    if batch == 0:
        return tuple(grads)
    block_m, block_d = _block_sizes(regions, dim)
    with _device.launch_guard(q):
        _l1_attention_backward_kernel[(batch,)](
            q, k, v, grad_s, grad_w, *grads,
            regions, dim,
            *q.stride(), *k.stride(), *v.stride(), *grad_s.stride(), *grad_w.stride(),
            *grads[0].stride(),
            EPS=L1_NORM_EPS, ACC_DTYPE=_ACC_DTYPE[q.dtype], UPCAST_OPERANDS=_upcast_operands(q.dtype),
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=NUM_WARPS,
        )
    return tuple(grads)


@_attention_backward.register_fake
def _(q, k, v, grad_s, grad_w):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


# ---- autograd ---------------------------------------------------------------------------
def _attention_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _attention_grad(ctx, grad_s, grad_w):
    q, k, v = ctx.saved_tensors
    # An output that took no part in the loss arrives as None.
    grad_s = torch.zeros_like(q) if grad_s is None else grad_s
    grad_w = q.new_zeros(q.shape[:2]) if grad_w is None else grad_w
    return _attention_backward(q, k, v, grad_s.to(q.dtype), grad_w.to(q.dtype))


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


# ---- public entry points ----------------------------------------------------------------
def availability(device_type: str) -> tuple[bool, str]:
    if triton is None:
        return False, IMPORT_ERROR
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        if _INTERPRETED:
            return True, f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1: slow, for tests)"
        return True, f"Triton {triton.__version__} kernels"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False, (
                "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on "
                "CPU (slow, for tests)"
            )
        if not _INTERPRETED:
            return False, (
                "TRITON_INTERPRET=1 was set after lnlatten_fast.ops.triton_attention was "
                "imported; set it before importing lnlatten_fast"
            )
        return True, f"Triton {triton.__version__} interpreter on CPU (slow, for tests)"
    return False, f"no Triton kernels for device type {device_type!r}"


def l1_nonlocal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(s, w) of SPEC §1 for validated (B, M, D) inputs of one dtype and device; see above."""
    return _attention(q, k, v)
