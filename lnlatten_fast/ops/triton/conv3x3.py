"""Triton 3x3 convolutions of the SimpleNet ensemble, forward: implicit GEMM with the patch
windows read straight from F9, per-patch weights, and bias, ReLU and 2x2 max-pool fused.

Ops (each a `torch.library.custom_op` with a fake, so torch.compile(fullgraph=True) traces it;
their backward is in conv3x3_backward.py):
* patch_conv3x3 (first layer): `WINDOWED` reads window m straight out of F9 at origin
  (gy*stride, gx*stride) through F9's strides (contiguous or channels-last); the windows are
  never materialised. The load mask zeroes every tap outside the PATCH (the window's own zero
  padding), not just outside the image.
* grouped_conv3x3 (layers 2-6): reads h[b, m] of (B, M, Cin, H, W), optional fused pool.

`_conv3x3_fwd_kernel`: one program = BLOCK_PIX output pixels of one window of one image x
BLOCK_CO output channels; K = Cin*9 is walked as 9 taps (unrolled; the tap's pixel offsets and
patch mask computed once) x Cin in chunks of BLOCK_K >= 16 (channels beyond Cin masked), one
tl.dot per step; weight[m] is the per-patch weight. Epilogue: + bias, ReLU, and with `POOL`
the 2x2/2 max-pool: the program then owns BLOCK_PIX *pooled* pixels and keeps four
accumulators (one per pre-pool position, sharing each weight tile), and writes the max and an
int8 argmax (0..3 = position in the 2x2 window, as torch's max_pool2d picks it; -1 = no
gradient, when ReLU is on and the max is <= 0): 1 byte per pooled output for the backward,
instead of saving the pre-pool activation or recomputing the conv. NaN propagates through
ReLU and pool as in torch.

Precision: fp32 accumulation for fp16/bf16/fp32 (float64 in float64); fp32 dots run with
input_precision="ieee" (no TF32), so results match torch to ~1e-5. Weights are handed to the
kernels re-laid out (M, 3, 3, Cin, Cout) / (M, 3, 3, Cout, Cin) so each weight tile row is
contiguous (one small copy per call).

One fixed launch configuration (no multi-config autotune: the interpreter cannot run one):
forward 128 pixels (32 pooled) x 64 Cout x 32 K, num_warps=8, num_stages=2; block sizes only
shrink to the next power of two (>= 16 for dot operands) of small channel counts and images.
What these compile to for a GPU: bench/compile_report.py.
"""

from __future__ import annotations

import torch

from ...geometry import PatchGeometry
from .. import _device
from .._outputs import new_output
from ..registry import register
from ._common import accumulator, next_power_of_2, tl, triton, widen_for_interpreter

# 8 warps: at 4 the bf16 conv kernels compiled for sm_90a run out of registers and spill;
# at 8 they fit without spills (bench/compile_report.py shows the counts).
_NUM_WARPS = 8
_NUM_STAGES = 2


def launch_options():
    """The conv kernels' launch options, forward and backward."""
    return {"num_warps": _NUM_WARPS, "num_stages": _NUM_STAGES}


# ==== device helpers shared with the backward kernels ======================================
# Index arithmetic is hoisted: what depends on the pixel and the tap is computed once per tap
# on 1-D vectors; the runtime loop over channel chunks only adds k0 * stride to ready-made
# 2-D offsets (this also keeps the interpreter, which pays per op, usable).
@triton.jit
def _window_tap(yy, xx, p_ok, PH, PW, s_h, s_w):
    """Offsets of window pixels (yy, xx) and whether they lie inside the PATCH: a tap that
    crosses the patch border reads the window's zero padding, never a neighbour's pixel."""
    inside = p_ok & (yy >= 0) & (yy < PH) & (xx >= 0) & (xx < PW)
    return yy * s_h + xx * s_w, inside


@triton.jit
def _relu(x):
    """ReLU that keeps NaN, as torch's does (tl.maximum(x, 0) would turn NaN into 0 and make a
    diverging run look healthy)."""
    return tl.where(x < 0, 0.0, x)


# ==== 3x3 convolution: forward ==============================================================
@triton.jit
def _conv3x3_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, idx_ptr,
    B, M, CIN, COUT, PH, PW, G, S,
    sx_b, sx_m, sx_c, sx_h, sx_w,
    sw_m, sw_o, sw_i, sw_h, sw_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, m, co, pixel] = act(bias[m, co] + sum_{ci, tap} x_m[b, ci, pixel + tap] w[m, co, ci, tap]).

    Program: BLOCK_PIX output pixels (pooled ones with POOL) of window m of image b x
    BLOCK_CO output channels. K = 9 taps (unrolled) x Cin in chunks of BLOCK_K.
    """
    if POOL:
        OH = PH // 2
        OW = PW // 2
    else:
        OH = PH
        OW = PW
    n_pix = OH * OW
    n_pix_blocks = (n_pix + BLOCK_PIX - 1) // BLOCK_PIX
    pid = tl.program_id(0)
    pix_blk = pid % n_pix_blocks
    bm = pid // n_pix_blocks  # = m * B + b: the programs of one window (one weight) run together
    b = bm % B
    m = bm // B

    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    p = pix_blk * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    p_ok = p < n_pix
    if POOL:  # top-left pre-pool pixel of each pooled output
        y0 = (p // OW) * 2
        x0 = (p % OW) * 2
    else:
        y0 = p // OW
        x0 = p % OW

    if WINDOWED:  # window m of F9: top-left at ((m // G) * S, (m % G) * S)
        x_base = x_ptr + b.to(tl.int64) * sx_b + ((m // G) * S) * sx_h + ((m % G) * S) * sx_w
    else:  # h[b, m]
        x_base = x_ptr + b.to(tl.int64) * sx_b + m.to(tl.int64) * sx_m
    w_base = w_ptr + m.to(tl.int64) * sw_m

    k_lane = tl.arange(0, BLOCK_K)
    acc0 = tl.full((BLOCK_PIX, BLOCK_CO), 0, ACC)
    acc1 = tl.full((BLOCK_PIX, BLOCK_CO), 0, ACC)
    acc2 = tl.full((BLOCK_PIX, BLOCK_CO), 0, ACC)
    acc3 = tl.full((BLOCK_PIX, BLOCK_CO), 0, ACC)
    for t in tl.static_range(9):
        ky = t // 3  # constexpr: t is a static_range index
        kx = t % 3
        w_tap = w_base + (ky * sw_h + kx * sw_w)
        # Per tap, 1-D only (pixel offsets and patch masks); the 2-D tile offsets are formed
        # at each load, so no 2-D pointer tensor stays live across the K loop (registers).
        off0, in0 = _window_tap(y0 + (ky - 1), x0 + (kx - 1), p_ok, PH, PW, sx_h, sx_w)
        if POOL:  # the other three pre-pool positions share every weight tile
            off1, in1 = _window_tap(y0 + (ky - 1), x0 + kx, p_ok, PH, PW, sx_h, sx_w)
            off2, in2 = _window_tap(y0 + ky, x0 + (kx - 1), p_ok, PH, PW, sx_h, sx_w)
            off3, in3 = _window_tap(y0 + ky, x0 + kx, p_ok, PH, PW, sx_h, sx_w)
        for k0 in range(0, CIN, BLOCK_K):
            ci = k0 + k_lane
            c_ok = ci < CIN  # channels beyond Cin read 0
            chan = ci[None, :] * sx_c
            wt = tl.load(w_tap + ci[:, None] * sw_i + co[None, :] * sw_o,
                         mask=c_ok[:, None] & co_ok[None, :], other=0.0)
            a = tl.load(x_base + off0[:, None] + chan, mask=in0[:, None] & c_ok[None, :], other=0.0)
            acc0 = tl.dot(a, wt, acc0, input_precision=PRECISION)
            if POOL:
                a = tl.load(x_base + off1[:, None] + chan, mask=in1[:, None] & c_ok[None, :], other=0.0)
                acc1 = tl.dot(a, wt, acc1, input_precision=PRECISION)
                a = tl.load(x_base + off2[:, None] + chan, mask=in2[:, None] & c_ok[None, :], other=0.0)
                acc2 = tl.dot(a, wt, acc2, input_precision=PRECISION)
                a = tl.load(x_base + off3[:, None] + chan, mask=in3[:, None] & c_ok[None, :], other=0.0)
                acc3 = tl.dot(a, wt, acc3, input_precision=PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + m * COUT + co, mask=co_ok, other=0.0).to(ACC)
        acc0 += bias[None, :]
        if POOL:
            acc1 += bias[None, :]
            acc2 += bias[None, :]
            acc3 += bias[None, :]
    if RELU:
        acc0 = _relu(acc0)
        if POOL:
            acc1 = _relu(acc1)
            acc2 = _relu(acc2)
            acc3 = _relu(acc3)

    out_off = (b * M + m).to(tl.int64) * COUT * n_pix + co[None, :] * n_pix + p[:, None]
    out_ok = p_ok[:, None] & co_ok[None, :]
    if POOL:
        # As torch's max_pool2d: in row-major order a larger value or a NaN takes over, so a
        # NaN anywhere in the window is the output (and the last NaN gets the gradient).
        best = acc0
        which = tl.full((BLOCK_PIX, BLOCK_CO), 0, tl.int32)
        take = (acc1 > best) | (acc1 != acc1)
        best = tl.where(take, acc1, best)
        which = tl.where(take, 1, which)
        take = (acc2 > best) | (acc2 != acc2)
        best = tl.where(take, acc2, best)
        which = tl.where(take, 2, which)
        take = (acc3 > best) | (acc3 != acc3)
        best = tl.where(take, acc3, best)
        which = tl.where(take, 3, which)
        if RELU:  # a max of 0 came through a dead ReLU: no gradient anywhere in the window
            which = tl.where(best <= 0, -1, which)  # NaN is not <= 0: its gradient passes
        tl.store(idx_ptr + out_off, which.to(tl.int8), mask=out_ok)
        acc0 = best
    tl.store(out_ptr + out_off, acc0.to(out_ptr.dtype.element_ty), mask=out_ok)


# ==== host side ==========================================================================
# Geometry of one conv call. WINDOWED (patch conv): x is F9 (B, Cin, IH, IW) and window m sits
# at ((m // G) * S, (m % G) * S); its strides are passed as (b, 0, c, h, w). Grouped: x is h
# (B, M, Cin, PH, PW), G = S = 1.
def _x_strides(x: torch.Tensor, windowed: bool):
    if windowed:
        s_b, s_c, s_h, s_w = x.stride()
        return s_b, 0, s_c, s_h, s_w
    return x.stride()


def _precision(dtype: torch.dtype) -> str:
    return "ieee"  # fp32 without TF32; ignored by tl.dot for 16-bit and float64 operands


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"the triton convolutions take float32/16, bfloat16 or float64, got {x.dtype}")


def _weight_for_tiles(weight: torch.Tensor, inner: str) -> torch.Tensor:
    """weight (M, Cout, Cin, 3, 3) with the same logical shape but stored (M, 3, 3, Cin, Cout)
    (inner="co": the forward's K x Cout tiles) or (M, 3, 3, Cout, Cin) (inner="ci": the input
    gradient's K x Cin tiles), so each tile row is one contiguous run instead of a stride-9
    gather. One copy of the weights per call (19 MB in bf16 at the paper's shape)."""
    if inner == "co":
        return weight.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2)
    return weight.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)


def _conv_forward(x, weight, bias, windowed, grid, patch, stride, relu, pool):
    out_dtype = x.dtype
    x, weight, bias = widen_for_interpreter(x, weight, bias)
    batch = x.shape[0]
    m, c_out, c_in = weight.shape[:3]
    ph, pw = (patch, patch) if windowed else x.shape[-2:]
    oh, ow = (ph // 2, pw // 2) if pool else (ph, pw)
    out = new_output((batch, m, c_out, oh, ow), x.dtype, x.device)
    idx = new_output((batch, m, c_out, oh, ow) if pool else (0,), torch.int8, x.device)
    if out.numel() == 0:
        return out.to(out_dtype), idx
    block_pix = next_power_of_2(oh * ow, 16, 32 if pool else 128)
    block_co = next_power_of_2(c_out, 16, 64)
    block_k = 16 if c_in <= 16 else 32
    bias_arg = weight if bias is None else bias.contiguous()
    weight = _weight_for_tiles(weight, "co")
    launch = (batch * m * triton.cdiv(oh * ow, block_pix), triton.cdiv(c_out, block_co))
    with _device.launch_guard(x):
        _conv3x3_fwd_kernel[launch](
            x, weight, bias_arg, out, idx,
            batch, m, c_in, c_out, ph, pw, grid, stride,
            *_x_strides(x, windowed), *weight.stride(),
            HAS_BIAS=bias is not None, RELU=relu, POOL=pool, WINDOWED=windowed,
            ACC=accumulator(x.dtype), PRECISION=_precision(x.dtype),
            BLOCK_PIX=block_pix, BLOCK_CO=block_co, BLOCK_K=block_k, **launch_options(),
        )
    return out.to(out_dtype), idx


# ---- patch_conv3x3 (first layer, windows read straight from F9) ---------------------------
@torch.library.custom_op("lnlatten_fast::triton_patch_conv3x3", mutates_args=())
def _patch_conv(
    f9: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    grid: int, patch: int, stride: int, relu: bool,
) -> torch.Tensor:
    return _conv_forward(f9, weight, bias, True, grid, patch, stride, relu, False)[0]


@_patch_conv.register_fake
def _(f9, weight, bias, grid, patch, stride, relu):
    return f9.new_empty(f9.shape[0], weight.shape[0], weight.shape[1], patch, patch)


# ---- grouped_conv3x3 (layers 2-6, optional fused 2x2 max-pool) ----------------------------
@torch.library.custom_op("lnlatten_fast::triton_grouped_conv3x3", mutates_args=())
def _grouped_conv(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool, pool: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, int8 argmax of the pool, or an empty tensor without pool)."""
    return _conv_forward(h, weight, bias, False, 1, 0, 1, relu, pool)


@_grouped_conv.register_fake
def _(h, weight, bias, relu, pool):
    batch, m, _, height, width = h.shape
    if pool:
        height, width = height // 2, width // 2
    shape = (batch, m, weight.shape[1], height, width)
    return h.new_empty(shape), h.new_empty(shape if pool else (0,), dtype=torch.int8)


# ---- public entry points (inputs validated by lnlatten_fast.ops) ---------------------------
@register("patch_conv3x3", "triton")
def patch_conv3x3(f9, weight, bias, geom: PatchGeometry, relu: bool = True):
    """(B, C, H, W) F9 -> (B, M, Cout, P, P): window m convolved with weight[m], zero padding at
    the patch border, + bias[m], optional ReLU. The windows are never materialised."""
    _check_dtype(f9)
    return _patch_conv(f9, weight, bias, geom.grid, geom.patch, geom.stride, relu)


@register("grouped_conv3x3", "triton")
def grouped_conv3x3(h, weight, bias, relu: bool = True, pool: bool = False):
    """(B, M, Cin, H, W) -> (B, M, Cout, H, W), or (..., H//2, W//2) with the fused 2x2 max-pool."""
    _check_dtype(h)
    return _grouped_conv(h, weight, bias, relu, pool)[0]
