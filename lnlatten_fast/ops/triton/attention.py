"""Triton L1 non-local attention: the whole forward in one kernel, the whole backward in one.

Op (SPEC §1), per batch element b, with Q, K, V the (M, D) slices of q, k, v:

    R~ = Q Kᵀ (M x M)    L_i = Σ_j |R~_ij|    d_i = max(L_i, 1e-12)    R = R~ / d
    w_j = (1/M) Σ_i R_ij  (column mean, (B, M))    s = R V  ((B, M, D))

Backward, given grad_s (B, M, D) and grad_w (B, M):

    gR_ij  = Σ_t grad_s[i,t] V[j,t] + grad_w[j] / M          grad_v = Rᵀ grad_s
    c_i    = Σ_k gR_ik R~_ik
    gR~_ij = gR_ij / d_i − [L_i >= eps] · sign(R~_ij) · c_i / d_i²
    grad_q = gR~ K                                             grad_k = gR~ᵀ Q

One program per batch element (grid = (B,)). The whole M x M relation matrix of one image
lives in registers (BLOCK_M = next_power_of_2(max(M, 16)) so every `tl.dot` dimension is at
least 16; rows/columns >= M are masked to zero) and D is walked in BLOCK_D chunks:

- forward: pass 1 over D accumulates R~ = Σ tl.dot(q_chunk, k_chunkᵀ); R and w are formed
  in registers and w is stored; pass 2 over D stores s_chunk = tl.dot(R, v_chunk).
- backward: pass 1 over D recomputes R~ and accumulates grad_s Vᵀ; R, gR, c, gR~ are formed
  in registers; pass 2 over D stores grad_q, grad_k and grad_v chunk by chunk.

The op moves ~4 MB forward and ~7 MB backward at the paper's shape and does little
arithmetic, so it is memory- and launch-bound: one launch per direction is the point (the
reference takes ~6 forward and ~15 backward kernels). The README's performance section has
the counts.

Precision: every product accumulates in float32 (float64 for float64 inputs). Products of two
loaded operands (Q Kᵀ, grad_s Vᵀ) take the inputs in their own dtype: a float16/bfloat16
product is exact in float32, so this equals the reference's upcast-then-multiply up to
summation order, and uses tensor cores on a GPU. Products with a computed M x M matrix
(R V, Rᵀ grad_s, gR~ K, gR~ᵀ Q) upcast the loaded chunk to the accumulator type instead of
rounding R or gR~ down to half precision: gR~ can exceed the float16 range (1/d_i is large
for a row with small L1 norm) and the reference keeps R in float32. All float32 dots use
`input_precision="ieee"` (no TF32), so float32 results match the reference to ~1e-6.

Block sizes are fixed (one configuration: the interpreter cannot autotune): BLOCK_D = 64
(smaller for tiny D), num_warps = 4.
"""

from __future__ import annotations

import torch

from .._autograd import register_attention_autograd
from .. import _device
from .._outputs import new_output
from ..reference import L1_NORM_EPS
from ..registry import register
from ._common import accumulator, next_power_of_2, tl, triton, widen_for_interpreter

# Fixed launch configuration. Tests lower MAX_BLOCK_D to walk small D in several chunks.
MAX_BLOCK_D = 64
NUM_WARPS = 4


def _block_sizes(regions: int, dim: int) -> tuple[int, int]:
    """BLOCK_M covers all M regions (>= 16 for tl.dot); BLOCK_D is one chunk of D (16..64)."""
    return next_power_of_2(regions), next_power_of_2(dim, 16, MAX_BLOCK_D)


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


# ---- host wrappers ----------------------------------------------------------------------
@torch.library.custom_op("lnlatten_fast::triton_l1_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    out_dtype = q.dtype
    q, k, v = widen_for_interpreter(q, k, v)
    s = new_output((batch, regions, dim), q.dtype, q.device)
    w = new_output((batch, regions), q.dtype, q.device)
    if batch:
        block_m, block_d = _block_sizes(regions, dim)
        with _device.launch_guard(q):
            _l1_attention_forward_kernel[(batch,)](
                q, k, v, s, w,
                regions, dim,
                *q.stride(), *k.stride(), *v.stride(), *s.stride(), *w.stride(),
                EPS=L1_NORM_EPS, ACC_DTYPE=accumulator(q.dtype),
                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=NUM_WARPS,
            )
    return s.to(out_dtype), w.to(out_dtype)


@torch.library.custom_op("lnlatten_fast::triton_l1_attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_s: torch.Tensor, grad_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, regions, dim = q.shape
    out_dtype = q.dtype
    grad_s, grad_w = grad_s.to(q.dtype), grad_w.to(q.dtype)
    q, k, v, grad_s, grad_w = widen_for_interpreter(q, k, v, grad_s, grad_w)
    grads = [new_output((batch, regions, dim), q.dtype, q.device) for _ in range(3)]
    if batch:
        block_m, block_d = _block_sizes(regions, dim)
        with _device.launch_guard(q):
            _l1_attention_backward_kernel[(batch,)](
                q, k, v, grad_s, grad_w, *grads,
                regions, dim,
                *q.stride(), *k.stride(), *v.stride(), *grad_s.stride(), *grad_w.stride(),
                *grads[0].stride(),
                EPS=L1_NORM_EPS, ACC_DTYPE=accumulator(q.dtype),
                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=NUM_WARPS,
            )
    return tuple(g.to(out_dtype) for g in grads)


register_attention_autograd(_attention, _attention_backward, "triton")


@register("l1_nonlocal_attention", "triton")
def l1_nonlocal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(s, w) of SPEC §1 for validated (B, M, D) inputs of one dtype and device."""
    return _attention(q, k, v)
