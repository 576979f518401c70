"""The `triton` backend's local branch: patch extraction, overlap-add and the SimpleNet 3x3 convs.

Kernels, host wrappers and autograd sit side by side (Liger-Kernel style). Every op is a
`torch.library.custom_op` ("lnlatten_fast::triton_<name>") with a fake implementation and a
registered backward whose pieces are custom ops too, so `torch.compile(fullgraph=True)` traces
them. Triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors (slow: tests only).

Kernels
-------
* `_extract_kernel`, `_overlap_add_kernel`: one element per lane. extract is a strided copy
  F9 -> (B, M, C, P, P); overlap-add is its adjoint written as a GATHER: each F9 element sums,
  in a fixed order, the <= ceil(P/stride)^2 windows covering it (no atomics, deterministic).
* `_conv3x3_fwd_kernel`: implicit-GEMM 3x3 conv, one program = BLOCK_PIX output pixels of one
  window of one image x BLOCK_CO output channels; K = Cin*9 is walked as 9 taps (unrolled; the
  tap's pixel offsets and patch mask computed once) x Cin in chunks of BLOCK_K >= 16 (channels
  beyond Cin masked), one tl.dot per step. `WINDOWED` (the first layer, patch_conv3x3)
  reads window m straight out of F9 at origin (gy*stride, gx*stride) through F9's strides
  (contiguous or channels-last); otherwise it reads h[b, m] of (B, M, Cin, H, W). The load
  mask zeroes every tap outside the PATCH (the window's own zero padding), not just outside
  the image. weight[m] is the per-patch weight. Epilogue: + bias, ReLU, and with `POOL` the
  2x2/2 max-pool: the program then owns BLOCK_PIX *pooled* pixels and keeps four accumulators
  (one per pre-pool position, sharing each weight tile), writes the max and an int8 argmax.
* `_conv3x3_bwd_input_kernel`: grad of the conv input as a transposed conv, GATHER form. One
  program = a BLOCK_H x BLOCK_W tile of input pixels x BLOCK_CI channels. For patch_conv3x3 the
  tile is on F9 and loops over the windows covering it (per axis the contiguous range
  [ceil((Y0-P+1)/s), floor(Y1/s)], PatchGeometry.windows_covering arithmetic), each with its
  own weight[m]; a (pixel, tap) pair only contributes when both the pixel and the output pixel
  it feeds lie inside that window, which is exactly the patch-border zero padding of the
  forward. Fixed summation order, no atomics: deterministic.
* `_conv3x3_bwd_weight_kernel`: grad of weight[m] (and bias[m]) as an implicit GEMM whose K is
  the flattened (image, pixel) axis: dW[m, co, ci, tap] = sum_{b,p} g[b,m,co,p] x[b,m,ci,p+tap].
  One program = (m, BLOCK_CO, BLOCK_CI, tap, batch split); the bias sum rides along in the
  (ci block 0, tap 0) programs. The batch is split until there are ~4 programs per SM; the
  splits write float32 partials that torch sums in a fixed order (two-stage, deterministic;
  one split, i.e. no second stage, when there are enough programs, and in the interpreter).
The backward kernels read the gradient w.r.t. the *pre-activation* conv output through
`_grad_pre`, which folds ReLU and pool in on the fly: no ReLU/pool gradient is ever
materialised.

Pool backward: the forward saves an int8 argmax per pooled output (0..3 = position in the 2x2
window, first maximum in row-major order like torch's max_pool2d; -1 = "no gradient", when
ReLU is on and the max is <= 0). That is 1 byte per pooled output, vs 8 bytes (4 bf16) for
saving the pre-pool activation or a full conv recompute. Without pool, the ReLU mask is
recovered from the saved output (out > 0), which the next layer keeps alive anyway.

Precision: fp32 accumulation for fp16/bf16/fp32 (float64 accumulates in float64); fp32 dots
run with input_precision="ieee" (no TF32), so results match torch to ~1e-5. The interpreter's
bf16 tl.dot is wrong (numpy has no bfloat16), so on CPU the conv wrappers widen bf16 operands
to fp32 (exact) and round the results once, which is what the GPU kernels compute.
Weights are handed to the kernels re-laid out (M, 3, 3, Cin, Cout) / (M, 3, 3, Cout, Cin) so
each weight tile row is contiguous (one small copy per call).

One fixed launch configuration per kernel (GPU tuning is unmeasured; no multi-config
autotune): forward 128 pixels (32 pooled) x 64 Cout x 32 K; input gradient 8x16 pixels x 64
Cin x 32 K; weight gradient 64 Cout x 64 Cin x 64 K; copies 1024 per program; num_warps=8
(see _NUM_WARPS), num_stages=2. Block sizes only shrink to the next power of two (>= 16 for
dot operands) of small channel counts and images.

Cost at paper shape (B=64, M=16 windows of P=48 on a 144x144 F9, bf16, fp32 accumulation),
for the SimpleNet ensemble conv64, conv64, pool, conv128, conv128, pool, conv256, conv256, pool.
FLOPs = 2*B*M*H*W*Cout*Cin*9 per conv (backward: 2x, grad input + grad weight). Bytes =
compulsory HBM traffic of the fused kernels: input once (F9 once for the first layer, its
overlapping windows re-read from L2), output once, weights, int8 argmax; backward reads grad,
mask source (out or argmax), input and weights and writes grad input and fp32 weight grads.

    layer                 fwd GFLOP  fwd MB  FLOP/B   bwd GFLOP  bwd MB
    patch conv 64->64       173.9     473     368       347.9     1551
    conv 64->64 + pool      173.9     416     418       347.9      834
    conv 64->128             87.0     229     380       173.9      762
    conv 128->128 + pool    173.9     212     819       347.9      429
    conv 128->256            87.0     123     709       173.9      406
    conv 256->256 + pool    173.9     123    1418       347.9      264
    SimpleNet total         869.7    1576               1739.5     4247

On an H100/H200-class GPU (~990 dense bf16 TFLOP/s, ~4.8 TB/s; ridge ~206 FLOP/B) every conv
is compute-bound: the floor is the tensor-core time, ~176 us for the first layer forward,
0.88 ms for the whole ensemble forward and 2.64 ms for forward + backward (memory alone would
allow 0.33 ms and 1.21 ms). The unfused path (extract + cuDNN grouped conv + separate ReLU and
pool) adds, at the first layer alone, the 302 MB window tensor written and read again; and
3 x the pre-pool activations (302 + 151 + 75 MB) written and read by the separate pool.
extract_patches / overlap_add: pure copies, 0 FLOPs: extract reads F9 (170 MB bf16) and
writes the windows (302 MB), ~98 us at 4.8 TB/s; overlap-add the reverse, same floor.

Verification (no GPU was available when this was written): tests/test_triton_conv.py runs
every kernel under the interpreter against `reference` (forward and all gradients), and
compiles the bf16/fp32 variants to sm_90a cubins with Triton's bundled ptxas (the interpreter
accepts code the GPU compiler rejects). At num_warps=8 the bf16/fp16 conv kernels compile
without register spills; the fp32 "ieee" variants (FMA, not tensor cores) spill a little.
GPU run times are unmeasured: bench/bench_triton_conv.py measures them against cuDNN.

Test hook: set `POISON_OUTPUTS = True` (module attribute) and every wrapper allocates its
outputs with NaN (int8 outputs with 7, an impossible argmax) instead of torch.empty, so an
element a kernel forgot to write shows up as NaN in the tests.
"""

import os

import torch

from ..geometry import PatchGeometry
from . import _device
from ._adjoint import register_patch_adjoints

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR = None
except ImportError as _error:  # the module still imports; availability() says why
    IMPORT_ERROR = f"the triton package could not be imported ({_error})"

    class _NoTriton:
        """Stands in for triton / triton.language so the kernel definitions below still parse:
        `@triton.jit` leaves the function alone and `tl.constexpr` annotations become None."""

        constexpr = None

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()

__all__ = [
    "POISON_OUTPUTS",
    "availability",
    "extract_patches",
    "grouped_conv3x3",
    "overlap_add",
    "patch_conv3x3",
]

INTERPRETER_HINT = (
    "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on CPU (slow, for tests)"
)

# Test hook (see the module docstring): outputs are born NaN instead of uninitialised.
POISON_OUTPUTS = False
_POISON_INT8 = 7

# Fixed launch configuration (no autotune): see the module docstring.
# 8 warps: at 4 the bf16 conv kernels compiled for sm_90a use all 255 registers and spill
# (up to ~1 KB per thread); at 8 they fit (232-255 registers, no spills). Checked offline with
# Triton's own ptxas (no GPU here); run times are unmeasured.
_NUM_WARPS = 8
_NUM_STAGES = 2
_COPY_BLOCK = 1024
# The grad-weight launch splits the batch until it has about this many programs per SM
# (the interpreter counts as one SM: it runs programs one after the other).
_WEIGHT_GRAD_PROGRAMS_PER_SM = 4


def availability(device_type: str) -> tuple[bool, str]:
    if IMPORT_ERROR is not None:
        return False, IMPORT_ERROR
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        return True, f"Triton {triton.__version__} kernels on CUDA"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, f"Triton {triton.__version__} interpreter on CPU (TRITON_INTERPRET=1; slow, for tests)"
        return False, INTERPRETER_HINT
    return False, f"no Triton kernels for device type {device_type!r}"


# ---- helpers ------------------------------------------------------------------------------
def _new(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        fill = _POISON_INT8 if not dtype.is_floating_point else float("nan")
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _np2(n: int, low: int = 16, high: int | None = None) -> int:
    v = max(low, 1 << max(0, int(n) - 1).bit_length())
    return v if high is None else min(v, high)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_options():
    """The conv kernels' launch options (the copies use Triton's default of 4 warps)."""
    return {"num_warps": _NUM_WARPS, "num_stages": _NUM_STAGES}


# ==== patch extraction and overlap-add =====================================================
@triton.jit
def _extract_kernel(
    f9_ptr, out_ptr, N, M, C, P, G, S,
    s_b, s_c, s_h, s_w,
    BLOCK: tl.constexpr,
):
    """out (B, M, C, P, P) contiguous <- window m of f9 (any strides). One element per lane."""
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = off < N
    x = off % P
    r = off // P
    y = r % P
    r = r // P
    c = r % C
    r = r // C
    m = r % M
    b = r // M
    src = b * s_b + c * s_c + ((m // G) * S + y) * s_h + ((m % G) * S + x) * s_w
    tl.store(out_ptr + off, tl.load(f9_ptr + src, mask=ok), mask=ok)


@triton.jit
def _overlap_add_kernel(
    p_ptr, out_ptr, N, M, C, H, W, P, G, S, NCOV,
    s_b, s_m, s_c, s_h, s_w,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """out (B, C, H, W) contiguous: each pixel gathers the windows covering it (<= NCOV per axis)."""
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = off < N
    xx = off % W
    r = off // W
    yy = r % H
    r = r // H
    c = r % C
    b = r // C
    # Windows covering a coordinate (PatchGeometry.windows_covering), clamped to the grid;
    # the ceil division only ever sees a non-negative numerator.
    gy_lo = (tl.maximum(yy - P + 1, 0) + S - 1) // S
    gy_hi = tl.minimum(yy // S, G - 1)
    gx_lo = (tl.maximum(xx - P + 1, 0) + S - 1) // S
    gx_hi = tl.minimum(xx // S, G - 1)
    acc = tl.full((BLOCK,), 0, ACC)
    base = b * s_b + c * s_c
    for jy in range(NCOV):
        gy = gy_lo + jy
        for jx in range(NCOV):
            gx = gx_lo + jx
            use = ok & (gy <= gy_hi) & (gx <= gx_hi)
            src = base + (gy * G + gx) * s_m + (yy - gy * S) * s_h + (xx - gx * S) * s_w
            acc += tl.load(p_ptr + src, mask=use, other=0.0).to(ACC)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _copy_grid(n: int):
    return (triton.cdiv(n, _COPY_BLOCK),)


@torch.library.custom_op("lnlatten_fast::triton_extract_patches", mutates_args=())
def _extract(f9: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, channels = f9.shape[:2]
    m = grid * grid
    out = _new((batch, m, channels, patch, patch), f9.dtype, f9.device)
    if out.numel():
        with _device.launch_guard(f9):
            _extract_kernel[_copy_grid(out.numel())](
                f9, out, out.numel(), m, channels, patch, grid, stride, *f9.stride(), BLOCK=_COPY_BLOCK
            )
    return out


@_extract.register_fake
def _(f9, grid, patch, stride):
    return f9.new_empty(f9.shape[0], grid * grid, f9.shape[1], patch, patch)


@torch.library.custom_op("lnlatten_fast::triton_overlap_add", mutates_args=())
def _overlap_add(patches: torch.Tensor, grid: int, patch: int, stride: int) -> torch.Tensor:
    batch, m, channels = patches.shape[:3]
    size = (grid - 1) * stride + patch
    out = _new((batch, channels, size, size), patches.dtype, patches.device)
    if out.numel():
        ncov = min(grid, -(-patch // stride))  # most windows covering one coordinate
        with _device.launch_guard(patches):
            _overlap_add_kernel[_copy_grid(out.numel())](
                patches, out, out.numel(), m, channels, size, size, patch, grid, stride, ncov,
                *patches.stride(), ACC=_acc_dtype(patches.dtype), BLOCK=_COPY_BLOCK,
            )
    return out


register_patch_adjoints(_extract, _overlap_add)


def extract_patches(f9: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, C, H, W) -> (B, M, C, P, P), contiguous."""
    return _extract(f9, geom.grid, geom.patch, geom.stride)


def overlap_add(patches: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """(B, M, C, P, P) -> (B, C, H, W), overlaps summed (gather, deterministic)."""
    return _overlap_add(patches, geom.grid, geom.patch, geom.stride)


# ==== 3x3 convolution: shared device helpers ================================================
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


@triton.jit
def _grad_pre(g_ptr, aux_ptr, off, mask, parity, RELU: tl.constexpr, POOL: tl.constexpr):
    """Gradient w.r.t. the pre-activation conv output, read from the op's output gradient.

    POOL: `off` addresses the pooled output; aux is the int8 argmax (-1: dead ReLU, no
    gradient) and only the pre-pool pixel whose `parity` ((y % 2) * 2 + x % 2) it names gets
    the gradient. Else with RELU: aux is the saved output, the gradient passes where it is > 0.
    """
    g = tl.load(g_ptr + off, mask=mask, other=0.0)
    if POOL:
        which = tl.load(aux_ptr + off, mask=mask, other=-1).to(tl.int32)
        g = tl.where(which == parity, g, 0.0)
    elif RELU:
        out = tl.load(aux_ptr + off, mask=mask, other=0.0)
        g = tl.where(out <= 0, 0.0, g)  # as torch's ReLU backward: a NaN output passes it
    return g


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


# ==== 3x3 convolution: grad of the input (gather) ===========================================
@triton.jit
def _conv3x3_bwd_input_kernel(
    g_ptr, aux_ptr, w_ptr, dx_ptr,
    B, M, CIN, COUT, PH, PW, IH, IW, G, S,
    sd_b, sd_m, sd_c, sd_h, sd_w,
    sw_m, sw_o, sw_i, sw_h, sw_w,
    RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[pixel, ci] = sum over windows m covering the pixel, taps, co of
    g_pre[m, co, pixel - tap] w[m, co, ci, tap], both pixels inside window m.

    WINDOWED: dx is F9's gradient (B, Cin, IH, IW); the tile visits every window covering it.
    Else: dx is h's gradient (B, M, Cin, PH, PW) and image (b, m) has the one window m.
    """
    BLOCK_PIX: tl.constexpr = BLOCK_H * BLOCK_W
    if POOL:
        OH = PH // 2
        OW = PW // 2
    else:
        OH = PH
        OW = PW
    n_tx = (IW + BLOCK_W - 1) // BLOCK_W
    n_ty = (IH + BLOCK_H - 1) // BLOCK_H
    pid = tl.program_id(0)
    tx = pid % n_tx
    r = pid // n_tx
    ty = r % n_ty
    img = r // n_ty
    if WINDOWED:
        b = img
        m_img = img * 0
    else:  # img = m * B + b
        b = img % B
        m_img = img // B

    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < CIN
    offs = tl.arange(0, BLOCK_PIX)
    Y = ty * BLOCK_H + offs // BLOCK_W
    X = tx * BLOCK_W + offs % BLOCK_W
    pix_ok = (Y < IH) & (X < IW)

    if WINDOWED:
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
    else:
        gy_lo = 0
        gy_hi = 0
        gx_lo = 0
        gx_hi = 0

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
            slice_off = (b.to(tl.int64) * M + m) * COUT * (OH * OW)
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
                    g_pix = (py // 2) * OW + px // 2
                    parity = (py % 2) * 2 + px % 2
                else:
                    g_pix = py * OW + px
                    parity = g_pix  # unused
                w_tap = w_base + (ky * sw_h + kx * sw_w)
                for k0 in range(0, COUT, BLOCK_K):  # 2-D offsets formed per load (registers)
                    co = k0 + k_lane
                    c_ok = co < COUT
                    a = _grad_pre(g_ptr + slice_off, aux_ptr + slice_off,
                                  g_pix[:, None] + co[None, :] * (OH * OW),
                                  ok[:, None] & c_ok[None, :], parity[:, None], RELU, POOL)
                    wt = tl.load(w_tap + co[:, None] * sw_o + ci[None, :] * sw_i,
                                 mask=c_ok[:, None] & ci_ok[None, :], other=0.0)
                    acc = tl.dot(a, wt, acc, input_precision=PRECISION)

    dx_off = (b.to(tl.int64) * sd_b + m_img.to(tl.int64) * sd_m + ci[None, :] * sd_c
              + Y[:, None] * sd_h + X[:, None] * sd_w)
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=pix_ok[:, None] & ci_ok[None, :])


# ==== 3x3 convolution: grad of weight and bias ==============================================
@triton.jit
def _conv3x3_bwd_weight_kernel(
    x_ptr, g_ptr, aux_ptr, dw_ptr, db_ptr,
    B, M, CIN, COUT, PH, PW, G, S, B_PER_SPLIT,
    sx_b, sx_m, sx_c, sx_h, sx_w,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr, WINDOWED: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_PIX: tl.constexpr,
):
    """Partial dW[split, m, co, ci, tap] = sum over the split's images and all pixels p of
    g_pre[b, m, co, p] * x_m[b, ci, p + tap] (0 outside the patch); db[split, m, co] alike.

    Program: (m, BLOCK_CO, BLOCK_CI, tap) x batch split. K = (image, pixel) flattened.
    """
    if POOL:
        OH = PH // 2
        OW = PW // 2
    else:
        OH = PH
        OW = PW
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
    g_chan = co[:, None] * (OH * OW)  # (BLOCK_CO, 1)
    x_chan = ci[None, :] * sx_c  # (1, BLOCK_CI)

    b_lo = split * B_PER_SPLIT
    n_k = tl.minimum(B - b_lo, B_PER_SPLIT) * (PH * PW)
    k_lane = tl.arange(0, BLOCK_PIX)
    acc = tl.full((BLOCK_CO, BLOCK_CI), 0, ACC)
    bacc = tl.full((BLOCK_CO,), 0, ACC)
    for k0 in range(0, n_k, BLOCK_PIX):
        k = k0 + k_lane
        k_ok = k < n_k
        b = (b_lo + k // (PH * PW)).to(tl.int64)
        pix = k % (PH * PW)
        y = pix // PW
        x = pix % PW
        if POOL:
            g_ok = k_ok & (y < 2 * OH) & (x < 2 * OW)
            g_pix = (y // 2) * OW + x // 2
            parity = (y % 2) * 2 + x % 2
        else:
            g_ok = k_ok
            g_pix = pix
            parity = pix  # unused
        g_row = (b * M + m) * (COUT * OH * OW) + g_pix
        g_t = _grad_pre(g_ptr, aux_ptr, g_row[None, :] + g_chan, g_ok[None, :] & co_ok[:, None],
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


# ==== 3x3 convolution: host side ============================================================
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
    gather. One copy of the weights per call (<= 19 MB bf16 at paper shape, ~8 us)."""
    if inner == "co":
        return weight.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2)
    return weight.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)


def _dot_operands(*tensors):
    """The interpreter's bf16 tl.dot is wrong (numpy has no bfloat16): on CPU, bf16 operands
    are widened to fp32 (exactly), the kernels accumulate in fp32 as they do on the GPU, and
    the wrapper rounds each result once, as the GPU kernels do."""
    return tuple(
        t.float() if t is not None and t.device.type == "cpu" and t.dtype == torch.bfloat16 else t
        for t in tensors
    )


def _conv_forward(x, weight, bias, windowed, grid, patch, stride, relu, pool):
    out_dtype = x.dtype
    x, weight, bias = _dot_operands(x, weight, bias)
    batch = x.shape[0]
    m, c_out, c_in = weight.shape[:3]
    ph, pw = (patch, patch) if windowed else x.shape[-2:]
    oh, ow = (ph // 2, pw // 2) if pool else (ph, pw)
    out = _new((batch, m, c_out, oh, ow), x.dtype, x.device)
    idx = _new((batch, m, c_out, oh, ow) if pool else (0,), torch.int8, x.device)
    if out.numel() == 0:
        return out.to(out_dtype), idx
    block_pix = _np2(oh * ow, 16, 32 if pool else 128)
    block_co = _np2(c_out, 16, 64)
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
            ACC=_acc_dtype(x.dtype), PRECISION=_precision(x.dtype),
            BLOCK_PIX=block_pix, BLOCK_CO=block_co, BLOCK_K=block_k, **_launch_options(),
        )
    return out.to(out_dtype), idx


def _conv_grad_input(grad, aux, weight, batch, windowed, grid, patch, stride, size_h, size_w, relu, pool):
    """Gradient of the conv input: F9's (B, Cin, H, W) when windowed, else h's (B, M, Cin, H, W)."""
    out_dtype = grad.dtype
    grad, aux, weight = _dot_operands(grad, aux, weight)
    m, c_out, c_in = weight.shape[:3]
    if windowed:
        ph = pw = patch
        ih = iw = (grid - 1) * stride + patch
        dx = _new((batch, c_in, ih, iw), grad.dtype, grad.device)
        d_strides = (dx.stride(0), 0, *dx.stride()[1:])
    else:
        ph, pw, ih, iw = size_h, size_w, size_h, size_w
        dx = _new((batch, m, c_in, ih, iw), grad.dtype, grad.device)
        d_strides = dx.stride()
    if dx.numel() == 0:
        return dx.to(out_dtype)
    grad = grad.contiguous()
    aux = grad if aux is None else aux.contiguous()
    block_w = _np2(iw, 1, 16)
    block_h = max(_np2(ih, 1, 128 // block_w), 16 // block_w)
    block_ci = _np2(c_in, 16, 64)
    block_k = 16 if c_out <= 16 else 32
    weight = _weight_for_tiles(weight, "ci")
    images = batch if windowed else batch * m
    launch = (images * triton.cdiv(ih, block_h) * triton.cdiv(iw, block_w), triton.cdiv(c_in, block_ci))
    with _device.launch_guard(grad):
        _conv3x3_bwd_input_kernel[launch](
            grad, aux, weight, dx,
            batch, m, c_in, c_out, ph, pw, ih, iw, grid, stride,
            *d_strides, *weight.stride(),
            RELU=relu, POOL=pool, WINDOWED=windowed,
            ACC=_acc_dtype(grad.dtype), PRECISION=_precision(grad.dtype),
            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_CI=block_ci, BLOCK_K=block_k, **_launch_options(),
        )
    return dx.to(out_dtype)


def _target_programs(device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return _WEIGHT_GRAD_PROGRAMS_PER_SM * sms


def _conv_grad_weight(grad, aux, x, m, c_out, windowed, grid, patch, stride, relu, pool, need_bias):
    out_dtype = x.dtype
    grad, aux, x = _dot_operands(grad, aux, x)
    batch, c_in = x.shape[0], (x.shape[1] if windowed else x.shape[2])
    ph, pw = (patch, patch) if windowed else x.shape[-2:]
    block_co = _np2(c_out, 16, 64)
    block_ci = _np2(c_in, 16, 64)
    programs = m * triton.cdiv(c_out, block_co) * triton.cdiv(c_in, block_ci) * 9
    splits = max(1, min(batch, -(-_target_programs(x.device) // programs)))
    per_split = -(-batch // splits) if batch else 1
    splits = -(-batch // per_split) if batch else 0
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw = _new((splits, m, c_out, c_in, 3, 3), acc_dtype, x.device)
    db = _new((splits, m, c_out) if need_bias else (0,), acc_dtype, x.device)
    if splits and dw.numel():
        grad = grad.contiguous()
        aux = grad if aux is None else aux.contiguous()
        with _device.launch_guard(x):
            _conv3x3_bwd_weight_kernel[(programs, splits)](
                x, grad, aux, dw, db if need_bias else dw,
                batch, m, c_in, c_out, ph, pw, grid, stride, per_split,
                *_x_strides(x, windowed),
                HAS_BIAS=need_bias, RELU=relu, POOL=pool, WINDOWED=windowed,
                ACC=_acc_dtype(x.dtype), PRECISION=_precision(x.dtype),
                BLOCK_CO=block_co, BLOCK_CI=block_ci, BLOCK_PIX=_np2(batch * ph * pw, 16, 64),
                **_launch_options(),
            )
    # Second stage: a fixed-order sum over the batch splits (B = 0: zero gradients).
    dw = dw.sum(0) if splits != 1 else dw[0]
    db = (db.sum(0) if splits != 1 else db[0]) if need_bias else x.new_zeros(0)
    return dw.to(out_dtype), db.to(out_dtype)


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


@torch.library.custom_op("lnlatten_fast::triton_patch_conv3x3_grad_input", mutates_args=())
def _patch_conv_grad_input(
    grad: torch.Tensor, out: torch.Tensor | None, weight: torch.Tensor,
    grid: int, patch: int, stride: int, relu: bool,
) -> torch.Tensor:
    return _conv_grad_input(grad, out, weight, grad.shape[0], True, grid, patch, stride, 0, 0, relu, False)


@_patch_conv_grad_input.register_fake
def _(grad, out, weight, grid, patch, stride, relu):
    size = (grid - 1) * stride + patch
    return grad.new_empty(grad.shape[0], weight.shape[2], size, size)


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
    d_f9 = d_w = d_b = None
    if ctx.needs_input_grad[0]:
        d_f9 = _patch_conv_grad_input(grad, out, weight, *ctx.geometry, ctx.relu)
    need_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_bias:
        d_w, d_b = _patch_conv_grad_weight(grad, out, f9, *ctx.geometry, ctx.relu, need_bias)
    return d_f9, d_w, (d_b if need_bias else None), None, None, None, None


_patch_conv.register_autograd(_patch_conv_backward, setup_context=_patch_conv_setup)


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


@torch.library.custom_op("lnlatten_fast::triton_grouped_conv3x3_grad_input", mutates_args=())
def _grouped_conv_grad_input(
    grad: torch.Tensor, aux: torch.Tensor | None, weight: torch.Tensor,
    height: int, width: int, relu: bool, pool: bool,
) -> torch.Tensor:
    return _conv_grad_input(grad, aux, weight, grad.shape[0], False, 1, 0, 1, height, width, relu, pool)


@_grouped_conv_grad_input.register_fake
def _(grad, aux, weight, height, width, relu, pool):
    return grad.new_empty(grad.shape[0], weight.shape[0], weight.shape[2], height, width)


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
    d_h = d_w = d_b = None
    if ctx.needs_input_grad[0]:
        d_h = _grouped_conv_grad_input(grad, aux, weight, *ctx.size, ctx.relu, ctx.pool)
    need_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_bias:
        d_w, d_b = _grouped_conv_grad_weight(grad, aux, h, ctx.relu, ctx.pool, need_bias)
    return d_h, d_w, (d_b if need_bias else None), None, None


_grouped_conv.register_autograd(_grouped_conv_backward, setup_context=_grouped_conv_setup)


# ---- public entry points (inputs validated by lnlatten_fast.ops) ---------------------------
def patch_conv3x3(f9, weight, bias, geom: PatchGeometry, relu: bool = True):
    """(B, C, H, W) F9 -> (B, M, Cout, P, P): window m convolved with weight[m], zero padding at
    the patch border, + bias[m], optional ReLU. The windows are never materialised."""
    _check_dtype(f9)
    return _patch_conv(f9, weight, bias, geom.grid, geom.patch, geom.stride, relu)


def grouped_conv3x3(h, weight, bias, relu: bool = True, pool: bool = False):
    """(B, M, Cin, H, W) -> (B, M, Cout, H, W), or (..., H//2, W//2) with the fused 2x2 max-pool."""
    _check_dtype(h)
    return _grouped_conv(h, weight, bias, relu, pool)[0]
