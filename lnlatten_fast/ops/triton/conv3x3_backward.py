"""Backward of the Triton 3x3 convolutions (conv3x3.py): gradients of the input, the weights
and the biases, all deterministic (fixed summation order, no atomics). Gradients, outputs and
the pool's argmax are read, and input gradients written, window-channels-last through their
strides (conv3x3.py explains the layout).

* `_conv3x3_bwd_input_kernel`: grad of the conv input as a transposed conv, GATHER form.
  Grouped convs: one program = BLOCK_PIX rows (image, input pixel) of window m, flattened
  over the images as in the forward, x BLOCK_CI channels. patch_conv3x3: the tile is a
  BLOCK_H x BLOCK_W block of F9 pixels of one image and loops over the windows covering it
  (per axis the contiguous range [ceil((Y0-P+1)/s), floor(Y1/s)], PatchGeometry.windows_covering
  arithmetic), each with its own weight[m]; a (pixel, tap) pair only contributes when both
  the pixel and the output pixel it feeds lie inside that window, which is exactly the
  patch-border zero padding of the forward.
* `_conv3x3_bwd_weight_kernel`: grad of weight[m] (and bias[m]) as an implicit GEMM whose K is
  the flattened (image, pixel) axis: dW[m, co, ci, tap] = sum_{b,p} g[b,m,co,p] x[b,m,ci,p+tap].
  One program = (m, BLOCK_CO, BLOCK_CI, tap, batch split); the bias sum rides along in the
  (ci block 0, tap 0) programs. The batch is split so the programs fill the GPU's CTA slots
  (`batch_splits`); the splits write float32 partials that torch sums in a fixed order
  (two-stage; one split, i.e. no second stage, when there are enough programs, and in the
  interpreter).
Both read the gradient w.r.t. the *pre-activation* conv output through `_grad_pre`, which
folds ReLU and pool in on the fly from the forward's saved output or int8 argmax: no ReLU or
pool gradient is ever materialised.

Launch configuration: input gradient 128 pixels (8x16 on F9) x 64 Cin x 32 K; weight
gradient 64 Cout x 64 Cin x 64 pixels; the forward's warps and stages.
"""

from __future__ import annotations

import torch

from .. import _device
from .._autograd import refuse_double_backward
from .._outputs import new_output
from . import _common
from ._common import LaunchPlan, accumulator, index_dtype, next_power_of_2, note_launch, tl, triton, widen_for_interpreter
from .conv3x3 import (
    _grouped_conv,
    _patch_conv,
    _weight_for_tiles,
    _window_tap,
    _x_strides,
    empty_window_like,
    new_window_output,
    precision,
    tiles,
    window_channels_last,
)



@triton.jit
def _grad_pre(g_ptr, aux_ptr, off, mask, parity, RELU: tl.constexpr, POOL: tl.constexpr):
    """Gradient w.r.t. the pre-activation conv output, read from the op's output gradient.

    POOL: `off` addresses the pooled output; aux is the int8 argmax (-1: dead ReLU, no
    gradient) and only the pre-pool pixel whose `parity` ((y % 2) * 2 + x % 2) it names gets
    the gradient. Else with RELU: aux is the saved output; the gradient passes unless it is
    <= 0 (a NaN output passes it, as torch's ReLU backward does).
    """
    g = tl.load(g_ptr + off, mask=mask, other=0.0)
    if POOL:
        which = tl.load(aux_ptr + off, mask=mask, other=-1).to(tl.int32)
        g = tl.where(which == parity, g, 0.0)
    elif RELU:
        out = tl.load(aux_ptr + off, mask=mask, other=0.0)
        g = tl.where(out <= 0, 0.0, g)  # as torch's ReLU backward: a NaN output passes it
    return g


# ==== 3x3 convolution: grad of the input (gather) ===========================================
@triton.jit
def _conv3x3_bwd_input_kernel(
    g_ptr, aux_ptr, w_ptr, dx_ptr,
    B, CIN, COUT, PH, PW, IH, IW, G, S,
    sg_b, sg_m, sg_c, sg_h, sg_w,
    sd_b, sd_m, sd_c, sd_h, sd_w,
    sw_m, sw_o, sw_i, sw_h, sw_w,
    RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, IDX: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[pixel, ci] = sum over windows m covering the pixel, taps, co of
    g_pre[m, co, pixel - tap] w[m, co, ci, tap], both pixels inside window m.

    WINDOWED: dx is F9's gradient (B, Cin, IH, IW); a BLOCK_H x BLOCK_W tile of one image
    visits every window covering it. Else: dx is h's gradient (B, M, Cin, PH, PW); the
    BLOCK_H * BLOCK_W rows are (image, pixel) of window m. The gradient and aux share strides.
    """
    BLOCK_PIX: tl.constexpr = BLOCK_H * BLOCK_W
    if POOL:
        OH = PH // 2
        OW = PW // 2
    else:
        OH = PH
        OW = PW
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_PIX)
    if WINDOWED:
        n_tx = (IW + BLOCK_W - 1) // BLOCK_W
        n_ty = (IH + BLOCK_H - 1) // BLOCK_H
        tx = pid % n_tx
        r = pid // n_tx
        ty = r % n_ty
        b = (r // n_ty + offs * 0).to(IDX)
        m_img = pid * 0
        Y = ty * BLOCK_H + offs // BLOCK_W
        X = tx * BLOCK_W + offs % BLOCK_W
        pix_ok = (Y < IH) & (X < IW)
        # Windows covering some row (column) of the tile: a contiguous grid range per axis
        # (PatchGeometry.windows_covering; the ceil division sees a non-negative numerator).
        y_first = ty * BLOCK_H
        y_last = tl.minimum(y_first + BLOCK_H, IH) - 1
        x_first = tx * BLOCK_W
        x_last = tl.minimum(x_first + BLOCK_W, IW) - 1
        gy_lo = (tl.maximum(y_first - PH + 1, 0) + S - 1) // S
        gy_hi = tl.minimum(y_last // S, G - 1)
        gx_lo = (tl.maximum(x_first - PW + 1, 0) + S - 1) // S
        gx_hi = tl.minimum(x_last // S, G - 1)
    else:  # rows: (image, pixel) of window m, flattened
        n_row_blocks = (B * PH * PW + BLOCK_PIX - 1) // BLOCK_PIX
        m_img = pid // n_row_blocks
        row = (pid % n_row_blocks) * BLOCK_PIX + offs
        pix_ok = row < B * PH * PW
        b = (row // (PH * PW)).to(IDX)
        pix = row % (PH * PW)
        Y = pix // PW
        X = pix % PW
        gy_lo = 0
        gy_hi = 0
        gx_lo = 0
        gx_hi = 0

    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < CIN
    g_img = b * sg_b  # per row: its image
    k_lane = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_PIX, BLOCK_CI), 0, ACC)
    for gy in range(gy_lo, gy_hi + 1):
        for gx in range(gx_lo, gx_hi + 1):
            if WINDOWED:
                m = gy * G + gx
                qy = Y - gy * S  # the pixel in window m's own coordinates
                qx = X - gx * S
            else:
                m = m_img
                qy = Y
                qx = X
            in_win = pix_ok & (qy >= 0) & (qy < PH) & (qx >= 0) & (qx < PW)
            g_win = m.to(tl.int64) * sg_m
            w_base = w_ptr + m.to(tl.int64) * sw_m
            for t in tl.static_range(9):
                ky = t // 3  # constexpr: t is a static_range index
                kx = t % 3
                # the output pixel that read this input pixel through tap (ky, kx)
                py = qy - (ky - 1)
                px = qx - (kx - 1)
                ok = in_win & (py >= 0) & (py < PH) & (px >= 0) & (px < PW)
                if POOL:  # only the floor-pooled area has a gradient
                    ok = ok & (py < 2 * OH) & (px < 2 * OW)
                    g_row = g_img + (py // 2) * sg_h + (px // 2) * sg_w
                    parity = (py % 2) * 2 + px % 2
                else:
                    g_row = g_img + py * sg_h + px * sg_w
                    parity = py  # unused
                w_tap = w_base + (ky * sw_h + kx * sw_w)
                for k0 in range(0, COUT, BLOCK_K):  # 2-D offsets formed per load (registers)
                    co = k0 + k_lane
                    c_ok = co < COUT
                    a = _grad_pre(g_ptr + g_win, aux_ptr + g_win, g_row[:, None] + co[None, :] * sg_c,
                                  ok[:, None] & c_ok[None, :], parity[:, None], RELU, POOL)
                    wt = tl.load(w_tap + co[:, None] * sw_o + ci[None, :] * sw_i,
                                 mask=c_ok[:, None] & ci_ok[None, :], other=0.0)
                    acc = tl.dot(a, wt, acc, input_precision=PRECISION)

    dx_row = b * sd_b + Y * sd_h + X * sd_w
    tl.store(dx_ptr + m_img.to(tl.int64) * sd_m + dx_row[:, None] + ci[None, :] * sd_c, acc.to(dx_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & ci_ok[None, :])


# ==== 3x3 convolution: grad of weight and bias ==============================================
@triton.jit
def _conv3x3_bwd_weight_kernel(
    x_ptr, g_ptr, aux_ptr, dw_ptr, db_ptr,
    B, M, CIN, COUT, PH, PW, G, S, B_PER_SPLIT,
    sx_b, sx_m, sx_c, sx_h, sx_w,
    sg_b, sg_m, sg_c, sg_h, sg_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, IDX: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_PIX: tl.constexpr,
):
    """Partial dW[split, m, co, ci, tap] = sum over the split's images and all pixels p of
    g_pre[b, m, co, p] * x_m[b, ci, p + tap] (0 outside the patch); db[split, m, co] alike.

    Program: (m, BLOCK_CO, BLOCK_CI, tap) x batch split. K = (image, pixel) flattened. The
    gradient and aux share strides.
    """
    n_ci = (CIN + BLOCK_CI - 1) // BLOCK_CI
    n_co = (COUT + BLOCK_CO - 1) // BLOCK_CO
    pid = tl.program_id(0)
    split = tl.program_id(1)
    t = pid % 9
    r = pid // 9
    ci_blk = r % n_ci
    r = r // n_ci
    co_blk = r % n_co
    m = r // n_co
    ky = t // 3
    kx = t % 3

    co = co_blk * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    ci = ci_blk * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < CIN
    if WINDOWED:
        x_base = x_ptr + ((m // G) * S) * sx_h + ((m % G) * S) * sx_w
    else:
        x_base = x_ptr + m.to(tl.int64) * sx_m
    g_base = g_ptr + m.to(tl.int64) * sg_m
    aux_base = aux_ptr + m.to(tl.int64) * sg_m
    g_chan = co[:, None] * sg_c  # (BLOCK_CO, 1)
    x_chan = ci[None, :] * sx_c  # (1, BLOCK_CI)

    b_lo = split * B_PER_SPLIT
    n_k = tl.minimum(B - b_lo, B_PER_SPLIT) * (PH * PW)
    k_lane = tl.arange(0, BLOCK_PIX)
    acc = tl.full((BLOCK_CO, BLOCK_CI), 0, ACC)
    bacc = tl.full((BLOCK_CO,), 0, ACC)
    for k0 in range(0, n_k, BLOCK_PIX):
        k = k0 + k_lane
        k_ok = k < n_k
        b = (b_lo + k // (PH * PW)).to(IDX)
        pix = k % (PH * PW)
        y = pix // PW
        x = pix % PW
        if POOL:
            g_ok = k_ok & (y < 2 * (PH // 2)) & (x < 2 * (PW // 2))
            g_row = b * sg_b + (y // 2) * sg_h + (x // 2) * sg_w
            parity = (y % 2) * 2 + x % 2
        else:
            g_ok = k_ok
            g_row = b * sg_b + y * sg_h + x * sg_w
            parity = y  # unused
        g_t = _grad_pre(g_base, aux_base, g_row[None, :] + g_chan, g_ok[None, :] & co_ok[:, None],
                        parity[None, :], RELU, POOL)  # (BLOCK_CO, BLOCK_PIX)
        x_row, inside = _window_tap(y + (ky - 1), x + (kx - 1), k_ok, PH, PW, sx_h, sx_w)
        xt = tl.load(x_base + (b * sx_b + x_row)[:, None] + x_chan,
                     mask=inside[:, None] & ci_ok[None, :], other=0.0)  # (BLOCK_PIX, BLOCK_CI)
        acc = tl.dot(g_t, xt, acc, input_precision=PRECISION)
        if HAS_BIAS:
            bacc += tl.sum(g_t.to(ACC), axis=1)

    row = (split * M + m).to(tl.int64) * COUT + co
    tl.store(dw_ptr + row[:, None] * (CIN * 9) + ci[None, :] * 9 + t, acc,
             mask=co_ok[:, None] & ci_ok[None, :])
    if HAS_BIAS:
        # Only the (tap 0, ci block 0) program writes the bias. The condition is built as a
        # tensor: the interpreter rejects a mask that mixes a tensor and a scalar bool.
        first = (co * 0 + t + ci_blk) == 0
        tl.store(db_ptr + row, bacc, mask=co_ok & first)


# ==== host side ==========================================================================
def _check_same_strides(grad: torch.Tensor, aux: torch.Tensor) -> None:
    """The kernels address the gradient and the saved output/argmax with one set of strides
    (both window-channels-last; a size-1 dimension's stride is never used)."""
    if any(n > 1 and a != b for n, a, b in zip(grad.shape, grad.stride(), aux.stride())):
        raise ValueError(f"the conv gradient (strides {grad.stride()}) and its saved output/argmax "
                         f"(strides {aux.stride()}) must share a layout")


def _conv_grad_input(grad, aux, weight, batch, windowed, grid, patch, stride, size_h, size_w, relu, pool):
    """Gradient of the conv input: F9's (B, Cin, H, W) stored channels-last when windowed, else
    h's (B, M, Cin, H, W) stored window-channels-last. grad and aux: window-channels-last."""
    out_dtype = grad.dtype
    grad, aux, weight = widen_for_interpreter(grad, aux, weight)
    m, c_out, c_in = weight.shape[:3]
    if windowed:
        ph = pw = patch
        ih = iw = (grid - 1) * stride + patch
        dx = new_output((batch, ih, iw, c_in), grad.dtype, grad.device).permute(0, 3, 1, 2)
        d_strides = (dx.stride(0), 0, *dx.stride()[1:])
    else:
        ph, pw, ih, iw = size_h, size_w, size_h, size_w
        dx = new_window_output(batch, m, c_in, ih, iw, grad.dtype, grad.device)
        d_strides = dx.stride()
    if dx.numel() == 0:
        return dx.to(out_dtype)
    aux = grad if aux is None else aux
    _check_same_strides(grad, aux)
    tile = tiles("grad_input", grad.dtype, windowed=windowed)
    if windowed:  # a block of F9 pixels, at most 16 wide
        block_w = next_power_of_2(iw, 1, 16)
        block_h = max(next_power_of_2(ih, 1, tile["rows"] // block_w), 16 // block_w)
        images = batch
        row_tiles = triton.cdiv(ih, block_h) * triton.cdiv(iw, block_w)
    else:  # rows (image, pixel) of one window; BLOCK_H x BLOCK_W only sets how many
        block_w, block_h = next_power_of_2(batch * ih * iw, 16, tile["rows"]), 1
        images = m
        row_tiles = triton.cdiv(batch * ih * iw, block_w)
    block_ci = next_power_of_2(c_in, 16, tile["cols"])
    block_k = next_power_of_2(c_out, 16, tile["k"])
    weight = _weight_for_tiles(weight, "ci")
    launch = (images * row_tiles, triton.cdiv(c_in, block_ci))
    note_launch(lambda: LaunchPlan(
        "grad_input", launch[0] * launch[1],
        flops=2 * m * batch * ph * pw * c_out * 9 * c_in,
        issued_flops=2 * _windows_visited(windowed, grid, patch, stride, ih, iw, block_h, block_w, batch, m, row_tiles)
        * block_h * block_w * launch[1] * block_ci * 9 * triton.cdiv(c_out, block_k) * block_k,
        rows=(batch * ih * iw) if windowed else m * batch * ih * iw, row_slots=launch[0] * block_h * block_w,
        bytes=grad.numel() * grad.element_size() + (aux.numel() * aux.element_size() if aux is not grad else 0)
        + weight.numel() * weight.element_size() + dx.numel() * dx.element_size()))
    with _device.launch_guard(grad):
        _conv3x3_bwd_input_kernel[launch](
            grad, aux, weight, dx,
            batch, c_in, c_out, ph, pw, ih, iw, grid, stride,
            *grad.stride(), *d_strides, *weight.stride(),
            RELU=relu, POOL=pool, WINDOWED=windowed,
            ACC=accumulator(grad.dtype), PRECISION=precision(grad.dtype), IDX=index_dtype(grad, dx),
            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_CI=block_ci, BLOCK_K=block_k,
            num_warps=tile["num_warps"], num_stages=tile["num_stages"],
        )
    return dx.to(out_dtype)


def _windows_visited(windowed, grid, patch, stride, ih, iw, block_h, block_w, batch, m, row_tiles) -> int:
    """(tile, window) pairs the input-gradient launch computes (for its LaunchPlan)."""
    if not windowed:
        return m * row_tiles
    def per_axis(size, block):
        return sum(
            max(0, min((min(t0 + block, size) - 1) // stride, grid - 1) - (max(t0 - patch + 1, 0) + stride - 1) // stride + 1)
            for t0 in range(0, size, block)
        )
    return batch * per_axis(ih, block_h) * per_axis(iw, block_w)


# Slots for the grad-weight launch: CTAs of it that fit on one SM at once (3-4 for the 16-bit
# grad-weight kernels in bench/compile_report.py's sm_90a builds; the lower bound).
_WEIGHT_GRAD_CTAS_PER_SM = 3


# A program's fixed cost (prologue, the float32 partial it writes, its share of the second
# stage), counted in GEMM K rows (pixels): the batch split's cost model charges each split it.
_SPLIT_OVERHEAD_ROWS = 512


def batch_splits(programs: int, batch: int, pixels: int, slots: int) -> int:
    """Images per split of the grad-weight launch. Each program costs its K rows (images x
    `pixels`) plus a fixed overhead; the launch takes waves x that, where a wave is `slots`
    programs (SMs x CTAs per SM). The cheapest wins, the fewest splits among equals."""
    best = None
    for per_split in range(max(batch, 1), 0, -1):
        splits = -(-batch // per_split)
        waves = -(-programs * max(splits, 1) // slots)
        cost = waves * (per_split * pixels + _SPLIT_OVERHEAD_ROWS)
        if best is None or cost < best[0]:
            best = (cost, per_split)
    return best[1]


def _conv_grad_weight(grad, aux, x, m, c_out, windowed, grid, patch, stride, relu, pool, need_bias):
    out_dtype = x.dtype
    grad, aux, x = widen_for_interpreter(grad, aux, x)
    batch, c_in = x.shape[0], (x.shape[1] if windowed else x.shape[2])
    ph, pw = (patch, patch) if windowed else x.shape[-2:]
    tile = tiles("grad_weight", x.dtype)
    block_co = next_power_of_2(c_out, 16, tile["rows"])
    block_ci = next_power_of_2(c_in, 16, tile["cols"])
    block_pix = next_power_of_2(batch * ph * pw, 16, tile["k"])
    programs = m * triton.cdiv(c_out, block_co) * triton.cdiv(c_in, block_ci) * 9
    slots = _common.multiprocessor_count(x.device) * _WEIGHT_GRAD_CTAS_PER_SM
    per_split = batch_splits(programs, batch, ph * pw, slots)
    splits = -(-batch // per_split) if batch else 0
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw = new_output((splits, m, c_out, c_in, 3, 3), acc_dtype, x.device)
    db = new_output((splits, m, c_out) if need_bias else (0,), acc_dtype, x.device)
    if splits and dw.numel():
        aux = grad if aux is None else aux
        _check_same_strides(grad, aux)
        note_launch(lambda: LaunchPlan(
            "grad_weight", programs * splits,
            flops=2 * m * batch * ph * pw * c_out * 9 * c_in,
            issued_flops=2 * programs * splits * triton.cdiv(per_split * ph * pw, block_pix) * block_pix * block_co * block_ci,
            rows=programs // triton.cdiv(c_out, block_co) * c_out * splits,  # MMA rows: output channels
            row_slots=programs * splits * block_co,
            bytes=x.numel() * x.element_size() + grad.numel() * grad.element_size()
            + (aux.numel() * aux.element_size() if aux is not grad else 0) + 2 * dw.numel() * dw.element_size()))
        with _device.launch_guard(x):
            _conv3x3_bwd_weight_kernel[(programs, splits)](
                x, grad, aux, dw, db if need_bias else dw,
                batch, m, c_in, c_out, ph, pw, grid, stride, per_split,
                *_x_strides(x, windowed), *grad.stride(),
                HAS_BIAS=need_bias, RELU=relu, POOL=pool, WINDOWED=windowed,
                ACC=accumulator(x.dtype), PRECISION=precision(x.dtype), IDX=index_dtype(x, grad),
                BLOCK_CO=block_co, BLOCK_CI=block_ci, BLOCK_PIX=block_pix,
                num_warps=tile["num_warps"], num_stages=tile["num_stages"],
            )
    # Second stage: a fixed-order sum over the batch splits (B = 0: zero gradients).
    dw = dw.sum(0) if splits != 1 else dw[0]
    db = (db.sum(0) if splits != 1 else db[0]) if need_bias else x.new_zeros(0)
    return dw.to(out_dtype), db.to(out_dtype)


# ---- patch_conv3x3 ----------------------------------------------------------------------
@torch.library.custom_op("lnlatten_fast::triton_patch_conv3x3_grad_input", mutates_args=())
def _patch_conv_grad_input(
    grad: torch.Tensor, out: torch.Tensor | None, weight: torch.Tensor,
    grid: int, patch: int, stride: int, relu: bool,
) -> torch.Tensor:
    return _conv_grad_input(grad, out, weight, grad.shape[0], True, grid, patch, stride, 0, 0, relu, False)


@_patch_conv_grad_input.register_fake
def _(grad, out, weight, grid, patch, stride, relu):
    size = (grid - 1) * stride + patch
    return grad.new_empty(grad.shape[0], size, size, weight.shape[2]).permute(0, 3, 1, 2)


@torch.library.custom_op("lnlatten_fast::triton_patch_conv3x3_grad_weight", mutates_args=())
def _patch_conv_grad_weight(
    grad: torch.Tensor, out: torch.Tensor | None, f9: torch.Tensor,
    grid: int, patch: int, stride: int, relu: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    m, c_out = grad.shape[1:3]
    return _conv_grad_weight(grad, out, f9, m, c_out, True, grid, patch, stride, relu, False, need_bias)


@_patch_conv_grad_weight.register_fake
def _(grad, out, f9, grid, patch, stride, relu, need_bias):
    m, c_out = grad.shape[1:3]
    db = f9.new_empty(m, c_out) if need_bias else f9.new_empty(0)
    return f9.new_empty(m, c_out, f9.shape[1], 3, 3), db


def _patch_conv_setup(ctx, inputs, output):
    f9, weight, bias, grid, patch, stride, relu = inputs
    ctx.geometry = (grid, patch, stride)
    ctx.relu = relu
    ctx.has_bias = bias is not None
    ctx.save_for_backward(f9, weight, output if relu else None)


def _patch_conv_backward(ctx, grad):
    f9, weight, out = ctx.saved_tensors
    grad = window_channels_last(grad)  # the layout of `out`; one copy if it comes otherwise
    d_f9 = d_w = d_b = None
    if ctx.needs_input_grad[0]:
        d_f9 = _patch_conv_grad_input(grad, out, weight, *ctx.geometry, ctx.relu)
    need_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_bias:
        d_w, d_b = _patch_conv_grad_weight(grad, out, f9, *ctx.geometry, ctx.relu, need_bias)
    return d_f9, d_w, (d_b if need_bias else None), None, None, None, None


_patch_conv.register_autograd(_patch_conv_backward, setup_context=_patch_conv_setup)
for _grad_op in (_patch_conv_grad_input, _patch_conv_grad_weight):
    refuse_double_backward(_grad_op, "patch_conv3x3", "triton")


# ---- grouped_conv3x3 --------------------------------------------------------------------
@torch.library.custom_op("lnlatten_fast::triton_grouped_conv3x3_grad_input", mutates_args=())
def _grouped_conv_grad_input(
    grad: torch.Tensor, aux: torch.Tensor | None, weight: torch.Tensor,
    height: int, width: int, relu: bool, pool: bool,
) -> torch.Tensor:
    return _conv_grad_input(grad, aux, weight, grad.shape[0], False, 1, 0, 1, height, width, relu, pool)


@_grouped_conv_grad_input.register_fake
def _(grad, aux, weight, height, width, relu, pool):
    return empty_window_like(grad, grad.shape[0], weight.shape[0], weight.shape[2], height, width)


@torch.library.custom_op("lnlatten_fast::triton_grouped_conv3x3_grad_weight", mutates_args=())
def _grouped_conv_grad_weight(
    grad: torch.Tensor, aux: torch.Tensor | None, h: torch.Tensor,
    relu: bool, pool: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    m, c_out = grad.shape[1:3]
    return _conv_grad_weight(grad, aux, h, m, c_out, False, 1, 0, 1, relu, pool, need_bias)


@_grouped_conv_grad_weight.register_fake
def _(grad, aux, h, relu, pool, need_bias):
    m, c_out = grad.shape[1:3]
    db = h.new_empty(m, c_out) if need_bias else h.new_empty(0)
    return h.new_empty(m, c_out, h.shape[2], 3, 3), db


def _grouped_conv_setup(ctx, inputs, output):
    h, weight, bias, relu, pool = inputs
    out, idx = output
    ctx.mark_non_differentiable(idx)
    ctx.relu, ctx.pool, ctx.has_bias = relu, pool, bias is not None
    ctx.size = tuple(h.shape[-2:])
    # The mask source: argmax with pool (it carries the ReLU mask too), else the output.
    ctx.save_for_backward(h, weight, idx if pool else (out if relu else None))


def _grouped_conv_backward(ctx, grad, _grad_idx):
    h, weight, aux = ctx.saved_tensors
    grad = window_channels_last(grad)  # the layout of the saved output/argmax; one copy if it comes otherwise
    d_h = d_w = d_b = None
    if ctx.needs_input_grad[0]:
        d_h = _grouped_conv_grad_input(grad, aux, weight, *ctx.size, ctx.relu, ctx.pool)
    need_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_bias:
        d_w, d_b = _grouped_conv_grad_weight(grad, aux, h, ctx.relu, ctx.pool, need_bias)
    return d_h, d_w, (d_b if need_bias else None), None, None


_grouped_conv.register_autograd(_grouped_conv_backward, setup_context=_grouped_conv_setup)
for _grad_op in (_grouped_conv_grad_input, _grouped_conv_grad_weight):
    refuse_double_backward(_grad_op, "grouped_conv3x3", "triton")
