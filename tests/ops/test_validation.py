"""Wrong shapes, dtypes, devices, geometry or backend names fail loudly and say which argument."""

import pytest
import torch

import lnlatten_fast as lf

GEOM = lf.PatchGeometry(8, 2, 5, 3)


def f9(*shape, dtype=torch.float32):
    return torch.randn(*(shape or (1, 2, 8, 8)), dtype=dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: lf.ops.extract_patches(f9(2, 8, 8), GEOM), ValueError, "f9 must be 4-D"),
        (lambda: lf.ops.extract_patches(f9(1, 2, 9, 9), GEOM), ValueError, "f9 is 9x9 but the geometry expects 8x8"),
        (lambda: lf.ops.extract_patches(torch.ones(1, 2, 8, 8, dtype=torch.int64), GEOM), TypeError, "f9 must be float32"),
        (lambda: lf.ops.extract_patches([[1.0]], GEOM), TypeError, "f9 must be a torch.Tensor"),
        (lambda: lf.ops.extract_patches(f9(), (2, 5, 3)), TypeError, "geom must be a lnlatten_fast.PatchGeometry"),
        (lambda: lf.ops.overlap_add(torch.randn(1, 3, 2, 5, 5), GEOM), ValueError, r"patches has shape .* expects \(B, 4, C, 5, 5\)"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(4, 3, 2, 3, 3), torch.randn(4, 3), GEOM, backend="quantum"), ValueError, "backend must be one of"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(3, 3, 2, 3, 3), None, GEOM), ValueError, "weight has 3 patch groups"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(4, 3, 1, 3, 3), None, GEOM), ValueError, "weight expects 1 input channels"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(4, 3, 2, 5, 5), None, GEOM), ValueError, "3x3 kernels"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(4, 3, 2, 3, 3), torch.randn(4, 2), GEOM), ValueError, r"bias must be \(M, C_out\)"),
        (lambda: lf.ops.patch_conv3x3(f9(), torch.randn(4, 3, 2, 3, 3, dtype=torch.float64), None, GEOM), TypeError, "weight has dtype torch.float64"),
        (lambda: lf.ops.grouped_conv3x3(torch.randn(1, 2, 3, 4), torch.randn(2, 3, 3, 3, 3), None), ValueError, "h must be 5-D"),
        (lambda: lf.ops.grouped_conv3x3(torch.randn(1, 2, 3, 1, 1), torch.randn(2, 3, 3, 3, 3), None, pool=True), ValueError, "pool=True needs H, W >= 2"),
        (lambda: lf.ops.l1_nonlocal_attention(torch.randn(2, 4, 3), torch.randn(2, 4, 5), torch.randn(2, 4, 3)), ValueError, "k has shape"),
        (lambda: lf.ops.l1_nonlocal_attention(torch.randn(2, 4, 3), torch.randn(2, 4, 3).half(), torch.randn(2, 4, 3)), TypeError, "k has dtype"),
        (lambda: lf.ops.l1_nonlocal_attention(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)), ValueError, "q must be 3-D"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unusable_backend_says_why(monkeypatch):
    from lnlatten_fast.ops import dispatch

    monkeypatch.setitem(dispatch._AVAILABILITY, ("native", "cpu"), (False, "built without a compiler"))
    q = torch.randn(1, 4, 3)
    with pytest.raises(RuntimeError, match="backend 'native' cannot run on cpu: built without a compiler"):
        lf.ops.l1_nonlocal_attention(q, q, q, backend="native")
    assert lf.backends()["native"]["cpu"].reason == "built without a compiler"
    assert lf.backends()["auto"]["cpu"].reason == "uses reference"  # auto falls back


def test_backends_reports_every_backend_and_device():
    table = lf.backends()
    assert set(table) == {"auto", "reference", "native", "triton"}
    for statuses in table.values():
        assert set(statuses) == {"cpu", "cuda"}
        for status in statuses.values():
            assert status.reason  # every verdict carries its reason
    assert table["reference"]["cpu"].usable
    assert table["reference"]["cuda"].usable == torch.cuda.is_available()


def test_auto_conv_choice_is_measured_once_per_shape(monkeypatch):
    """On CUDA `auto` times triton against cuDNN for each conv shape once and keeps the winner."""
    from lnlatten_fast.ops import dispatch

    monkeypatch.setattr(dispatch, "_MEASURED", {})
    monkeypatch.setattr(dispatch, "availability", lambda name, dev: (True, "test"))
    timings = {"triton": 2.0, "native": 1.0}
    calls = []

    def timer(fn, device):
        calls.append(device)
        return timings[fn()]

    cuda = torch.device("cuda")
    key = (((2, 16, 8, 10, 10),), "torch.float32", True, ())
    assert dispatch.conv_backend("grouped_conv3x3", key, cuda, lambda name: name, timer) == "native"
    timings["triton"] = 0.5  # a later, different timing must not change a remembered choice
    assert dispatch.conv_backend("grouped_conv3x3", key, cuda, lambda name: name, timer) == "native"
    assert len(calls) == 2  # two candidates timed once each
    other = (((4, 16, 8, 10, 10),), "torch.float32", True, ())
    assert dispatch.conv_backend("grouped_conv3x3", other, cuda, lambda name: name, timer) == "triton"
    assert dispatch.measured_choices() == {("grouped_conv3x3", *key): "native", ("grouped_conv3x3", *other): "triton"}
