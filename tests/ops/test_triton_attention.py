"""The Triton L1 attention (lnlatten_fast.ops.triton.attention) against `reference`.

On CPU the kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1 before
anything imports them). On a GPU machine run with TRITON_INTERPRET=0 to test the compiled
kernels: the CPU cases then skip and the CUDA ones run (with TRITON_INTERPRET=1 CUDA tensors
go through the interpreter too).

Every output is allocated NaN-filled here (`ops._outputs.poisoned_outputs`, see the `poisoned`
fixture), so an element a kernel forgets to write fails the comparison (NaN counts as an
infinite error in `relative_error`).
"""


import pytest
import torch
from helpers import TOLERANCE, assert_all_close, relative_error
from hypothesis import example, given
from hypothesis import strategies as st

from lnlatten_fast.ops import reference
from lnlatten_fast.ops._outputs import new_output, poisoned_outputs
from lnlatten_fast.ops.triton import _common
from lnlatten_fast.ops.triton import attention as ta

CPU_OK, CPU_REASON = _common.availability("cpu")
CUDA_OK, CUDA_REASON = _common.availability("cuda")
needs_cpu = pytest.mark.skipif(not CPU_OK, reason=CPU_REASON)
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=CUDA_REASON)
DEVICES = [pytest.param("cpu", marks=needs_cpu), pytest.param("cuda", marks=needs_cuda)]
LAYOUTS = ("contiguous", "transposed", "strided")


@pytest.fixture(autouse=True, scope="module")
def poisoned():
    with poisoned_outputs():
        yield


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in a non-contiguous layout: D-major, or every other element of a buffer."""
    if layout == "transposed":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "strided":
        buffer = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype, device=t.device)
        buffer[..., ::2] = t
        return buffer[..., ::2]
    return t


def run_both(inputs, grads, use=(True, True)):
    """(outputs, input grads) of triton and reference, with the same upstream gradients.

    `use` says which of (s, w) enter the loss; a left-out output reaches backward as None.
    """
    results = []
    for fn in (ta.l1_nonlocal_attention, reference.l1_nonlocal_attention):
        leaves = [t.detach().requires_grad_(True) for t in inputs]  # detach keeps the strides
        outs = fn(*leaves)
        used = [(o, g) for o, g, u in zip(outs, grads, use) if u]
        torch.autograd.backward([o for o, _ in used], [g for _, g in used])
        results.append(
            ([o.detach() for o in outs], [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves])
        )
    return results


def random_case(batch, regions, dim, dtype, device, nonnegative, seed, layouts=("contiguous",) * 4):
    """Inputs [q, k, v] and upstream gradients [grad_s, grad_w]; `layouts` for q, k, v, grad_s."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad_s = (torch.randn(batch, regions, dim, generator=gen) for _ in range(4))
    grad_w = torch.randn(batch, regions, generator=gen)
    if nonnegative:  # as in the model (after ReLU and max-pool)
        q, k = q.abs(), k.abs()
    q, k, v, grad_s = (
        with_layout(t.to(dtype=dtype, device=device), layout) for t, layout in zip((q, k, v, grad_s), layouts)
    )
    grad_w = grad_w.to(dtype=dtype, device=device)
    if layouts[3] != "contiguous":
        grad_w = grad_w.t().contiguous().t()  # strides (1, B)
    return [q, k, v], [grad_s, grad_w]


# ---- forward and backward against the reference ------------------------------------------
REGIONS = st.one_of(st.sampled_from([4, 9, 16]), st.integers(1, 20))


@needs_cpu
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # fp16 zero row
@given(
    st.integers(0, 3),
    REGIONS,
    st.integers(1, 40),
    st.sampled_from([torch.float32, torch.float16]),
    st.booleans(),
    st.booleans(),
    st.tuples(*[st.sampled_from(LAYOUTS)] * 4),
    st.sampled_from([16, ta.MAX_BLOCK_D]),
    st.integers(0, 2**31),
)
# D = 37 with BLOCK_D = 16: three chunks, the last one ragged.
@example(2, 16, 37, torch.float32, False, True, ("contiguous",) * 4, 16, 0)
@example(3, 9, 40, torch.float16, True, False, ("strided", "transposed", "contiguous", "strided"), 16, 1)
@example(1, 4, 1, torch.float32, False, False, ("transposed",) * 4, 64, 2)  # D = 1: grad_q ≡ 0
@example(2, 1, 33, torch.float32, False, True, ("contiguous",) * 4, 64, 3)  # M = 1: grad_q, grad_k ≡ 0
@example(2, 20, 150, torch.float16, False, False, ("contiguous", "strided", "transposed", "contiguous"), 64, 4)
def test_matches_reference(batch, regions, dim, dtype, nonnegative, zero_row, layouts, block_d, seed):
    """Forward and backward against the reference. D = 150 at BLOCK_D = 64: ragged 3rd chunk."""
    inputs, grads = random_case(batch, regions, dim, dtype, "cpu", nonnegative, seed, layouts)
    zero_row = zero_row and batch > 0
    if zero_row:  # an all-zero row of R~ (a zero row of q): d_i = eps, outputs stay finite
        inputs[0][0, regions // 2] = 0
    # A smaller BLOCK_D walks D in several chunks at the small D the interpreter runs fast.
    default_block_d, ta.MAX_BLOCK_D = ta.MAX_BLOCK_D, block_d
    try:
        (outs, in_grads), (ref_outs, ref_grads) = run_both(inputs, grads)
    finally:
        ta.MAX_BLOCK_D = default_block_d
    out_scales, grad_scales = rounding_scales(inputs, grads)
    assert_matches_reference(outs, ref_outs, out_scales, dtype)
    if zero_row and dtype != torch.float32:
        # Its q-gradient is ~1/eps = 1e12 times k: float16 can't hold it (inf in both backends).
        return
    if zero_row:
        # Checked on its own, then blanked: the 1e12-sized row would dwarf everything else.
        row = regions // 2
        assert relative_error(in_grads[0][0, row], ref_grads[0][0, row]) <= TOLERANCE[dtype]
        blank = lambda g: g.index_fill(1, torch.tensor([row]), 0)
        in_grads[0], ref_grads[0], grad_scales[0] = blank(in_grads[0]), blank(ref_grads[0]), blank(grad_scales[0])
    assert_matches_reference(in_grads, ref_grads, grad_scales, dtype)


# Fraction of a tensor's rounding scale (see `rounding_scales`) used as a floor for ‖ref‖.
CONDITION_FLOOR = 0.1


def assert_matches_reference(got, expected, scales, dtype):
    """`assert_all_close`'s measure (‖got − ref‖ / ‖ref‖, ‖ref‖ floored at 1% of the group's norm)
    with a second floor: CONDITION_FLOOR times the tensor's rounding scale.

    Rounding errors are proportional to the size of the terms summed, not to the result, and
    here the result can be far smaller than its terms: R is invariant to scaling a row of q
    or k by a positive factor, so grad_q ≡ 0 for D = 1 and grad_q = grad_k ≡ 0 for M = 1
    (sums of terms ∝ 1/d_i that cancel exactly), and a signed sum such as grad_v = Rᵀ grad_s
    can cancel by chance. Such cases fail a purely relative float32 bound for the float32
    reference itself (measured against float64). A wrong formula errs by about the terms'
    size, far above 1e-5 x 0.1 of it, so the floor costs no power to catch bugs.
    """
    group_norm = sum(e.double().norm().item() ** 2 for e in expected) ** 0.5
    for g, e, scale in zip(got, expected, scales, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, e.dtype, g.shape, e.shape)
        floor = max(1e-2 * group_norm, CONDITION_FLOOR * scale.norm().item())
        err = relative_error(g, e, scale_floor=floor)
        assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]:.0e} ({dtype})"


def rounding_scales(inputs, grads):
    """Outputs (s, w) and input gradients (q, k, v) recomputed in float64 with every operand
    taken in absolute value: the size of the terms each entry sums, which bounds its rounding
    error (d_i, the row's L1 norm, is the true one)."""
    q, k, v = (t.double() for t in inputs)
    grad_s, grad_w = (g.double().abs() for g in grads)
    d = (q @ k.mT).abs().sum(-1, keepdim=True).clamp_min(reference.L1_NORM_EPS)
    q, k, v = q.abs(), k.abs(), v.abs()
    rel = q @ k.mT
    r = rel / d
    g_r = grad_s @ v.mT + grad_w[:, None, :] / q.shape[1]
    g_rel = g_r / d + (g_r * rel).sum(-1, keepdim=True) / d**2
    return [r @ v, r.mean(1)], [g_rel @ k, g_rel.mT @ q, r.mT @ grad_s]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 16, 37), (2, 9, 24), (1, 20, 70)])
def test_bfloat16_matches_reference(device, shape):
    # On CPU this runs the interpreter's bf16 path (operands upcast before tl.dot, see
    # `_upcast_operands`); on CUDA the compiled one (bf16 straight into tl.dot).
    inputs, grads = random_case(*shape, torch.bfloat16, device, nonnegative=False, seed=sum(shape))
    (outs, in_grads), (ref_outs, ref_grads) = run_both(inputs, grads)
    assert_all_close(outs, ref_outs, torch.bfloat16)
    assert_all_close(in_grads, ref_grads, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use", [(True, False), (False, True)], ids=["only_s", "only_w"])
def test_output_left_out_of_the_loss(device, use):
    """A None gradient for s or w counts as zero."""
    inputs, grads = random_case(2, 6, 10, torch.float32, device, nonnegative=True, seed=3)
    (_, in_grads), (_, ref_grads) = run_both(inputs, grads, use=use)
    assert_all_close(in_grads, ref_grads, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_with_l1_norm_below_eps(device, dtype):
    """0 < L_i < eps: d_i = eps is a constant there, so the gradient has no term through the
    norm (clamp_min's [L >= eps] gate); with it, grad_q of that row would be off by ~L_i / eps."""
    inputs, grads = random_case(2, 5, 6, dtype, device, nonnegative=False, seed=7)
    inputs[0][1, 2] *= 1e-14
    assert 0 < (inputs[0][1, 2] @ inputs[1][1].mT).abs().sum() < reference.L1_NORM_EPS
    (outs, in_grads), (ref_outs, ref_grads) = run_both(inputs, grads)
    assert_all_close(outs, ref_outs, dtype)
    assert relative_error(in_grads[0][1, 2], ref_grads[0][1, 2]) <= TOLERANCE[dtype]
    assert_all_close(in_grads, ref_grads, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_zero_row_is_finite_in_half_precision(device, dtype):
    q, k, v = (torch.rand(2, 5, 8, device=device).to(dtype) for _ in range(3))
    q[1, 3] = 0
    s, w = ta.l1_nonlocal_attention(q, k, v)
    assert torch.isfinite(s).all() and torch.isfinite(w).all()
    assert torch.equal(s[1, 3], torch.zeros(8, dtype=dtype, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_launches_nothing(device, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"kernel launched with grid {grid} for B = 0")

    monkeypatch.setattr(ta, "_l1_attention_forward_kernel", NoLaunch())
    monkeypatch.setattr(ta, "_l1_attention_backward_kernel", NoLaunch())
    q, k, v = (torch.randn(0, 5, 7, device=device, requires_grad=True) for _ in range(3))
    s, w = ta.l1_nonlocal_attention(q, k, v)
    assert s.shape == (0, 5, 7) and w.shape == (0, 5)
    (s.sum() + w.sum()).backward()
    assert q.grad.shape == k.grad.shape == v.grad.shape == (0, 5, 7)


# ---- availability -------------------------------------------------------------------------
def test_availability_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    usable, reason = _common.availability("cpu")
    assert not usable
    assert reason == (
        "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on CPU "
        "(slow, for tests)"
    )
    assert _common.availability("mps")[0] is False


def test_poisoned_outputs_show_up():
    """The fixture's NaN fill is on, and a NaN counts as an infinite error."""
    out = new_output((2, 3), torch.float32, torch.device("cpu"))
    assert torch.isnan(out).all()
    assert relative_error(out, torch.zeros(2, 3)) == float("inf")


# ---- paper shape, CUDA only ---------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paper_shape(dtype):
    inputs, grads = random_case(64, 16, 512, dtype, "cuda", nonnegative=True, seed=11)
    (outs, in_grads), (ref_outs, ref_grads) = run_both(inputs, grads)
    assert_all_close(outs, ref_outs, dtype)
    assert_all_close(in_grads, ref_grads, dtype)
    assert TOLERANCE[dtype] <= 2e-2
