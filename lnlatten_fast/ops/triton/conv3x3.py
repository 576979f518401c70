"""Triton 3x3 convolutions of the SimpleNet ensemble, forward: implicit GEMM with the patch
windows read straight from F9, per-patch weights, and bias, ReLU and 2x2 max-pool fused.

Ops (each a `torch.library.custom_op` with a fake, so torch.compile(fullgraph=True) traces it;
their backward is in conv3x3_backward.py):
* patch_conv3x3 (first layer): `WINDOWED` reads window m straight out of F9 at origin
  (gy*stride, gx*stride) through F9's strides; the windows are never materialised. The load
  mask zeroes every tap outside the PATCH (the window's own zero padding), not just outside
  the image.
* grouped_conv3x3 (layers 2-6): reads h[b, m] of (B, M, Cin, H, W), optional fused pool.

Layout: window-channels-last
----------------------------
Every per-window activation these ops return, every gradient of one they compute, and the
pool's int8 argmax keep their logical shape (B, M, C, H, W) but are STORED (B, M, H, W, C)
(`window_channels_last`), and F9 is read channels-last (B, H, W, C). All kernels address
them through strides, so any layout computes the right values; the public entry points
convert an input that is not channels-last once (a no-op between two triton convs), and the
backward does the same for an incoming gradient.
Why: the GEMM's K axis is the channel axis. With channels innermost each GEMM row (one pixel)
is one contiguous run of channels, so Triton vectorises every activation and gradient load
into 16-byte `cp.async` copies into shared memory. Stored (B, M, C, H, W), a warp's lanes sit
H*W elements apart: one 2-byte scalar load per lane, 32 cache lines for 64 useful bytes
(bench/compile_report.py shows both: `ld.global` by width and `cp.async` by size).

Tiling
------
`_conv3x3_fwd_kernel`: one program = BLOCK_PIX GEMM rows x BLOCK_CO output channels of one
window m. The rows are window m's output pixels of EVERY image, flattened as (image, pixel):
the weights depend only on the window, so several images share a tile where a map is small
(12x12, 6x6) and no tile is half empty (B * H * W is what gets tiled, not H * W). The
programs of one window run next to each other, so its weights stay in L2. K = 9 taps
(unrolled) x Cin in chunks of BLOCK_K, one tl.dot per step; weight[m] is the per-patch weight.
Epilogue: + bias, ReLU, and with `POOL` the 2x2/2 max-pool: rows are then *pooled* pixels and
the program keeps four accumulators (one per pre-pool position, sharing each weight tile),
and writes the max and an int8 argmax (0..3 = position in the 2x2 window, as torch's
max_pool2d picks it; -1 = no gradient, when ReLU is on and the max is <= 0): 1 byte per
pooled output for the backward, instead of saving the pre-pool activation or recomputing the
conv. NaN propagates through ReLU and pool as in torch.
Block sizes: 128 rows (64 pooled rows x 4 accumulators): Hopper's wgmma needs >= 64 rows per
warpgroup, so a 32-row pooled tile falls back to mma.sync. They shrink only for small
problems (next power of two, >= 16 for dot operands).

Precision: fp32 accumulation for fp16/bf16/fp32 (float64 in float64). fp32 operands follow
`torch.backends.cudnn.allow_tf32`, as cuDNN's convolutions do: TF32 tensor cores when it is
True (torch's default), exact IEEE fp32 (FMA, ~1e-6 relative to float64) when it is False.
Weights are handed to the kernels re-laid out (M, 3, 3, Cin, Cout) / (M, 3, 3, Cout, Cin) so
each weight tile row is contiguous (one small copy per call).

One fixed launch configuration per kernel and dtype (no multi-config autotune: the
interpreter cannot run one). What these compile to for a GPU: bench/compile_report.py.
"""

from __future__ import annotations

import torch

from ...geometry import PatchGeometry
from .. import _device
from .._outputs import new_output
from ..registry import register
from ._common import LaunchPlan, accumulator, index_dtype, next_power_of_2, note_launch, tl, triton, widen_for_interpreter


# ==== layout ================================================================================
def is_window_channels_last(t: torch.Tensor) -> bool:
    """Whether a (B, M, C, H, W) tensor is stored (B, M, H, W, C) densely."""
    return t.permute(0, 1, 3, 4, 2).is_contiguous()


def window_channels_last(t: torch.Tensor) -> torch.Tensor:
    """t (B, M, C, H, W) stored (B, M, H, W, C): t itself when it already is, else one copy."""
    if is_window_channels_last(t):
        return t
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def image_channels_last(t: torch.Tensor) -> torch.Tensor:
    """t (B, C, H, W) stored (B, H, W, C): t itself when it already is, else one copy."""
    return t if t.is_contiguous(memory_format=torch.channels_last) else t.contiguous(memory_format=torch.channels_last)


def new_window_output(batch: int, m: int, c: int, h: int, w: int, dtype, device) -> torch.Tensor:
    """A (B, M, C, H, W) output stored window-channels-last."""
    return new_output((batch, m, h, w, c), dtype, device).permute(0, 1, 4, 2, 3)


def empty_window_like(like: torch.Tensor, batch: int, m: int, c: int, h: int, w: int, dtype=None) -> torch.Tensor:
    """The fakes' counterpart of new_window_output (same shape and strides)."""
    return like.new_empty(batch, m, h, w, c, dtype=dtype).permute(0, 1, 4, 2, 3)


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
    B, CIN, COUT, PH, PW, G, S,
    sx_b, sx_m, sx_c, sx_h, sx_w,
    so_b, so_m, so_c, so_h, so_w,
    sw_m, sw_o, sw_i, sw_h, sw_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, IDX: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, m, co, pixel] = act(bias[m, co] + sum_{ci, tap} x_m[b, ci, pixel + tap] w[m, co, ci, tap]).

    Program: BLOCK_PIX rows (image, output pixel; pooled pixels with POOL) of window m x
    BLOCK_CO output channels. K = 9 taps (unrolled) x Cin in chunks of BLOCK_K. idx (the
    pool's argmax) has out's strides.
    """
    if POOL:
        OH = PH // 2
        OW = PW // 2
    else:
        OH = PH
        OW = PW
    n_pix = OH * OW
    n_row_blocks = (B * n_pix + BLOCK_PIX - 1) // BLOCK_PIX
    pid = tl.program_id(0)
    m = pid // n_row_blocks  # the programs of one window (one weight) run together
    row = (pid % n_row_blocks) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    row_ok = row < B * n_pix
    b = (row // n_pix).to(IDX)
    p = row % n_pix
    if POOL:  # top-left pre-pool pixel of each pooled output
        y0 = (p // OW) * 2
        x0 = (p % OW) * 2
    else:
        y0 = p // OW
        x0 = p % OW

    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    if WINDOWED:  # window m of F9: top-left at ((m // G) * S, (m % G) * S)
        x_base = x_ptr + ((m // G) * S) * sx_h + ((m % G) * S) * sx_w
    else:  # h[:, m]
        x_base = x_ptr + m.to(tl.int64) * sx_m
    x_img = b * sx_b  # per row: its image
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
        # Per tap, 1-D only (row offsets and patch masks); the 2-D tile offsets are formed
        # at each load, so no 2-D pointer tensor stays live across the K loop (registers).
        off0, in0 = _window_tap(y0 + (ky - 1), x0 + (kx - 1), row_ok, PH, PW, sx_h, sx_w)
        off0 += x_img
        if POOL:  # the other three pre-pool positions share every weight tile
            off1, in1 = _window_tap(y0 + (ky - 1), x0 + kx, row_ok, PH, PW, sx_h, sx_w)
            off2, in2 = _window_tap(y0 + ky, x0 + (kx - 1), row_ok, PH, PW, sx_h, sx_w)
            off3, in3 = _window_tap(y0 + ky, x0 + kx, row_ok, PH, PW, sx_h, sx_w)
            off1 += x_img
            off2 += x_img
            off3 += x_img
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

    out_win = m.to(tl.int64) * so_m
    out_row = b * so_b + (p // OW) * so_h + (p % OW) * so_w
    out_off = out_win + out_row[:, None] + co[None, :] * so_c
    out_ok = row_ok[:, None] & co_ok[None, :]
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


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: fp32 follows torch.backends.cudnn.allow_tf32 (TF32 tensor
    cores, or exact IEEE fp32); 16-bit and float64 operands ignore it."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


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


# ---- tiles ---------------------------------------------------------------------------------
# The launch shape of each conv kernel: GEMM rows x cols x K chunk, warps, stages. Chosen from
# sm_90a builds (bench/compile_report.py) for 16-bit and TF32 operands: every kernel on wgmma
# (>= 64 rows per warpgroup), no spills, and >= 2 CTAs per SM where the accumulators allow it:
#  * forward: 128 rows x 64 Cout on 8 warps (two warpgroups of 64 rows, 2 CTAs/SM). Pooled,
#    64 pooled rows x 4 accumulators; at 64 Cout those take 154 registers (1 CTA/SM), at
#    32 Cout on 4 warps 150 (3 CTAs/SM), and both read the same shared-memory bytes per
#    FLOP (at 8 warps each warpgroup re-reads the A tile), so the 3-CTA shape.
#  * grad_input: 64 rows x 64 Cin on 4 warps: its A operand is built in registers (ReLU/pool
#    mask folded in), and 128 rows on 8 warps needed 136-180 registers (1 CTA/SM).
#  * grad_weight: 64 Cout x 64 Cin x 64 pixels on 4 warps (3-4 CTAs/SM; on 8 warps each
#    warpgroup re-reads the A tile).
# TF32 gradients take half the columns (4-byte operands). Exact fp32 (IEEE, no TF32) runs
# tl.dot as FMA loops holding both operand tiles in registers: its own smaller tiles, K 16
# and one stage. Neither spills.
_TILES = {
    # kernel: rows, cols, K chunk, warps ("+pool": the pooled variant)
    "forward": (128, 64, 32, 8),
    "forward+pool": (64, 32, 32, 4),
    "grad_input": (64, 64, 32, 4),
    "grad_weight": (64, 64, 64, 4),
}
_TILES_EXACT = {
    "forward": (64, 64, 16, 8),
    "forward+pool": (32, 32, 16, 4),
    "grad_input": (32, 32, 16, 4),
    "grad_input+window": (64, 32, 16, 4),  # patch conv: the window loop needs the registers
    "grad_weight": (32, 32, 16, 4),
}


def tiles(kernel: str, dtype: torch.dtype, pool: bool = False, windowed: bool = False) -> dict:
    """{rows, cols, k, num_warps, num_stages} of a conv kernel for these operands. grad_weight:
    rows = Cout, cols = Cin, k = pixels."""
    exact = dtype in (torch.float32, torch.float64) and precision(dtype) == "ieee"
    table = _TILES_EXACT if exact else _TILES
    key = kernel + ("+pool" if pool else "+window" if windowed else "")
    rows, cols, k, warps = table.get(key, table[kernel])
    if dtype == torch.float32 and not exact and kernel != "forward":
        cols //= 2  # TF32: 4-byte operands; the gradients' gathers need 242 registers even so
    return {"rows": rows, "cols": cols, "k": k, "num_warps": warps, "num_stages": 1 if exact else 2}


def _conv_forward(x, weight, bias, windowed, grid, patch, stride, relu, pool):
    out_dtype = x.dtype
    x, weight, bias = widen_for_interpreter(x, weight, bias)
    batch = x.shape[0]
    m, c_out, c_in = weight.shape[:3]
    ph, pw = (patch, patch) if windowed else x.shape[-2:]
    oh, ow = (ph // 2, pw // 2) if pool else (ph, pw)
    out = new_window_output(batch, m, c_out, oh, ow, x.dtype, x.device)
    idx = new_window_output(batch, m, c_out, oh, ow, torch.int8, x.device) if pool else new_output((0,), torch.int8, x.device)
    if out.numel() == 0:
        return out.to(out_dtype), idx
    tile = tiles("forward", x.dtype, pool=pool)
    blocks = {  # shrunk to the next power of two (>= 16, as tl.dot needs) of small problems
        "BLOCK_PIX": next_power_of_2(batch * oh * ow, 16, tile["rows"]),
        "BLOCK_CO": next_power_of_2(c_out, 16, tile["cols"]),
        "BLOCK_K": next_power_of_2(c_in, 16, tile["k"]),
    }
    bias_arg = weight if bias is None else bias.contiguous()
    weight = _weight_for_tiles(weight, "co")
    launch = (m * triton.cdiv(batch * oh * ow, blocks["BLOCK_PIX"]), triton.cdiv(c_out, blocks["BLOCK_CO"]))
    k_chunks = triton.cdiv(c_in, blocks["BLOCK_K"])
    n_acc = 4 if pool else 1  # pooled rows: one accumulator per pre-pool position
    note_launch(lambda: LaunchPlan(
        "forward", launch[0] * launch[1],
        flops=2 * m * batch * oh * ow * n_acc * c_out * 9 * c_in,
        issued_flops=2 * launch[0] * launch[1] * blocks["BLOCK_PIX"] * n_acc * blocks["BLOCK_CO"] * 9 * k_chunks * blocks["BLOCK_K"],
        rows=m * batch * oh * ow, row_slots=launch[0] * blocks["BLOCK_PIX"],
        bytes=x.numel() * x.element_size() + weight.numel() * weight.element_size()
        + out.numel() * out.element_size() + idx.numel()))
    with _device.launch_guard(x):
        _conv3x3_fwd_kernel[launch](
            x, weight, bias_arg, out, idx,
            batch, c_in, c_out, ph, pw, grid, stride,
            *_x_strides(x, windowed), *out.stride(), *weight.stride(),
            HAS_BIAS=bias is not None, RELU=relu, POOL=pool, WINDOWED=windowed,
            ACC=accumulator(x.dtype), PRECISION=precision(x.dtype), IDX=index_dtype(x, out), **blocks,
            num_warps=tile["num_warps"], num_stages=tile["num_stages"],
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
    return empty_window_like(f9, f9.shape[0], weight.shape[0], weight.shape[1], patch, patch)


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
    out = empty_window_like(h, batch, m, weight.shape[1], height, width)
    idx = empty_window_like(h, batch, m, weight.shape[1], height, width, torch.int8) if pool else h.new_empty((0,), dtype=torch.int8)
    return out, idx


# ---- public entry points (inputs validated by lnlatten_fast.ops) ---------------------------
@register("patch_conv3x3", "triton")
def patch_conv3x3(f9, weight, bias, geom: PatchGeometry, relu: bool = True):
    """(B, C, H, W) F9 -> (B, M, Cout, P, P) stored window-channels-last: window m convolved with
    weight[m], zero padding at the patch border, + bias[m], optional ReLU. The windows are never
    materialised; F9 is read channels-last (converted once if it is not)."""
    _check_dtype(f9)
    return _patch_conv(image_channels_last(f9), weight, bias, geom.grid, geom.patch, geom.stride, relu)


@register("grouped_conv3x3", "triton")
def grouped_conv3x3(h, weight, bias, relu: bool = True, pool: bool = False):
    """(B, M, Cin, H, W) -> (B, M, Cout, H, W), or (..., H//2, W//2) with the fused 2x2 max-pool;
    read and returned window-channels-last (h converted once if it is not)."""
    _check_dtype(h)
    return _grouped_conv(window_channels_last(h), weight, bias, relu, pool)[0]
