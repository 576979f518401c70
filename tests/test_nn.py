"""lnlatten_fast.nn: each block against an independent torch loop over windows, torch.compile
(fullgraph), a user's own backbone with LNLHead trained on every backend, the README example,
and checkpoints of the flat layout."""

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import TOLERANCE, micro_config, relative_error

import lnlatten_fast as lf
from lnlatten_fast.errors import ParameterError

BACKENDS = [b for b in ("reference", "native", "triton") if lf.backends()[b]["cpu"].usable]
README = Path(__file__).resolve().parents[1] / "README.md"
FIXTURE = Path(__file__).parent / "data" / "lnlattennet_flat_keys.pt"


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-zero biases too, so a bias that is dropped or misplaced shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.5 / max(1, p[0].numel()) ** 0.5))


# ---- each block against a loop over windows ---------------------------------------------------
def _simplenet_by_loop(ensemble: lf.nn.PatchEnsemble, x: torch.Tensor) -> torch.Tensor:
    geom, out = ensemble.geometry, []
    for m, (r, c) in enumerate(geom.origins()):
        h = x[:, :, r:r + geom.patch, c:c + geom.patch]  # zero padding at the window's own border
        for i, conv in enumerate(ensemble.convs):
            h = F.relu(F.conv2d(h, conv.weight[m], conv.bias[m], padding=1))
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
        out.append(h)
    h = torch.stack(out, dim=1)
    if ensemble.out_size is not None and h.shape[-1] != ensemble.out_size:
        h = F.adaptive_avg_pool2d(h.flatten(0, 1), ensemble.out_size).unflatten(0, h.shape[:2])
    return h


# The pooled mode adds a torch adaptive pool after the same kernels: checked on the fast backends.
@pytest.mark.parametrize("backend, out_size", [(b, None) for b in BACKENDS] + [(b, 5) for b in BACKENDS if b != "triton"])
def test_patch_ensemble_matches_a_loop_over_windows(backend, out_size, interpreter_without_overflow_checks):
    geom = lf.PatchGeometry(24, 2, 16, 8)  # natural side 2
    ensemble = lf.nn.PatchEnsemble(geom, 3, (4, 8, 8), out_size=out_size, backend=backend)
    _randomize(ensemble)
    x = torch.randn(2, 3, 24, 24, requires_grad=True)
    got = ensemble(x)
    expected = _simplenet_by_loop(ensemble, x)
    assert got.shape == (2, 4, 8, out_size or 2, out_size or 2)
    assert relative_error(got, expected) <= TOLERANCE[torch.float32]
    grad = torch.randn_like(expected)
    (got_dx,) = torch.autograd.grad(got, x, grad)
    (expected_dx,) = torch.autograd.grad(expected, x, grad)
    assert relative_error(got_dx, expected_dx) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("side, shared", [(6, False), (4, False), (6, True)], ids=["valid", "padded", "shared"])
def test_local_attention_matches_a_loop_over_windows(side, shared):
    attention = lf.nn.LocalAttention(3, 8, side, (8, 4, 4, 4, 4), shared=shared)
    _randomize(attention)
    f = torch.randn(2, 3, 8, side, side)
    padding = 0 if side >= 5 else 1
    expected = []
    for m in range(3):
        g = 0 if shared else m
        h = f[:, m]
        for conv in attention.convs:
            kernel = conv.weight.shape[-1]
            h = F.relu(F.conv2d(h, conv.weight[g], conv.bias[g], padding=padding if kernel == 3 else 0))
        h = F.linear(F.linear(h.flatten(1), attention.fc1.weight[g], attention.fc1.bias[g]),
                     attention.fc2.weight[g], attention.fc2.bias[g])
        expected.append(torch.sigmoid(h[:, 0]))
    got = attention(f)
    assert got.shape == (2, 3)
    assert relative_error(got, torch.stack(expected, dim=1)) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_l1_nonlocal_attention_matches_the_formula(backend, interpreter_without_overflow_checks):
    block = lf.nn.L1NonLocalAttention(6, 16, grid=2, backend=backend)
    _randomize(block)
    low = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    block.double()
    s, w_g = block(low)
    q, k, v = (F.max_pool2d(F.relu(proj(low)), 2).flatten(2).transpose(1, 2)
               for proj in (block.query, block.key, block.value))
    r = q @ k.transpose(1, 2)
    r = r / r.abs().sum(dim=2, keepdim=True).clamp_min(1e-12)
    assert s.shape == (2, 4, 16) and w_g.shape == (2, 4)
    assert relative_error(w_g, r.mean(dim=1)) <= TOLERANCE[torch.float64]
    assert relative_error(s, r @ v) <= TOLERANCE[torch.float64]


def test_head_is_eqs_1_and_2_on_its_blocks():
    head = lf.nn.LNLHead(8, 16, 32, micro_config("reference"), alpha=0.3).eval()
    _randomize(head)
    high, low = torch.randn(2, 8, 32, 32), torch.randn(2, 16, 4, 4)
    out = head(high, low, return_features=True)
    s, w_g = head.nonlocal_attention(low)
    g_star = 0.7 * out.features["g"] + 0.3 * s  # eq. 1
    f = head.patches(high).flatten(2)
    w_l = head.local_attention(head.patches(high))
    ensemble = ((w_g * w_l)[..., None] * f).sum(dim=1)  # eq. 2
    assert torch.allclose(out.features["g_star"], g_star, atol=1e-6)
    assert torch.allclose(out.nonlocal_weights, w_g) and torch.allclose(out.local_weights, w_l)
    assert torch.allclose(out.logits, head.classifier(torch.cat([g_star.flatten(1), ensemble], 1)), atol=1e-5)


def test_attention_net_is_the_unet_and_the_head():
    model = lf.LNLAttenNet(micro_config("reference")).eval()
    x = torch.randn(2, 3, 32, 32)
    f5, f9 = model.unet(x)
    assert torch.equal(model(x).logits, model.head(f9, f5).logits)
    assert isinstance(model.head, lf.nn.LNLHead) and model.geometry == model.head.geometry


# ---- torch.compile -----------------------------------------------------------------------------
def _blocks():
    geom = lf.PatchGeometry(24, 2, 16, 8)
    return {
        "PatchEnsemble": (lf.nn.PatchEnsemble(geom, 3, (4, 8, 8), out_size=None), (torch.randn(2, 3, 24, 24),)),
        "LocalAttention": (lf.nn.LocalAttention(4, 8, 6, (8, 4, 4, 4, 4)), (torch.randn(2, 4, 8, 6, 6),)),
        "L1NonLocalAttention": (lf.nn.L1NonLocalAttention(6, 16, 2), (torch.randn(2, 6, 4, 4),)),
        "LNLHead": (lf.nn.LNLHead(8, 16, 32, micro_config("auto")).eval(),
                    (torch.randn(2, 8, 32, 32), torch.randn(2, 16, 2, 2))),
    }


def _flat(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", ["PatchEnsemble", "LocalAttention", "L1NonLocalAttention", "LNLHead"])
def test_fullgraph_compile_of_each_block_is_eager(name):
    """One graph (fullgraph) through each block, forward and backward equal to eager."""
    block, inputs = _blocks()[name]
    inputs = [x.requires_grad_() for x in inputs]
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    for run in (block, compiled):
        outs = _flat(run(*inputs))
        grads = torch.autograd.grad(sum(o.float().sum() for o in outs), inputs)
        if run is block:
            eager = outs, grads
    for a, b in zip([*outs, *grads], [*eager[0], *eager[1]], strict=True):
        assert torch.equal(a, b)


def test_inductor_compile_of_a_backbone_with_the_head(monkeypatch, tmp_path):
    """The default backend (inductor), fullgraph: equal to eager within fp32 rounding."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = BackboneWithHead("auto").eval()
    x = torch.randn(2, 3, 16, 16)
    torch._dynamo.reset()
    # inductor's own patch API: a monkeypatched config attribute is gone for later tests once undone
    with torch._inductor.config.patch(fx_graph_cache=False):
        got = torch.compile(model, fullgraph=True)(x).logits
    assert relative_error(got, model(x).logits, scale_floor=1e-6) <= 1e-5


# ---- a user's own backbone ---------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """Any torch CNN that gives a high- and a low-resolution map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.MaxPool2d(4), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x):
        high = self.stem(x)  # (B, 8, 16, 16)
        return high, self.deep(high)  # (B, 16, 4, 4)


class BackboneWithHead(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = lf.nn.LNLHead(8, 16, 16, micro_config(backend), num_patches=4)  # 2 x 2 windows of 10 px

    def forward(self, x):
        return self.head(*self.backbone(x))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_own_backbone_with_the_head_trains_on_every_backend(backend, interpreter_without_overflow_checks):
    torch.manual_seed(0)
    model = BackboneWithHead(backend)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        out = model(x)
        loss = lf.lnl_loss(out.logits, y, model, l2_lambda=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert out.nonlocal_weights.shape == out.local_weights.shape == (4, 4)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.head.patches.convs[0].weight.grad.abs().sum() > 0  # the fused ops pass gradients back
    assert losses[-1] < losses[0], losses
    # eq. 3's L2 covers the conv and linear weights of both, not the BatchNorm's
    assert len(lf.nn.regularized_weights(model)) == 3 + len(lf.nn.regularized_weights(model.head))  # 3 convs


def test_head_errors_name_the_mismatch():
    head = lf.nn.LNLHead(8, 16, 32, micro_config("reference"))
    with pytest.raises(ValueError, match=r"high must be \(B, 8, 32, 32\) as LNLHead\(high_channels, high_size\) "
                                         r"was built for, got \(2, 8, 28, 28\)"):
        head(torch.randn(2, 8, 28, 28), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"low must be \(B, 16, h, w\)"):
        head(torch.randn(2, 8, 32, 32), torch.randn(2, 12, 4, 4))
    with pytest.raises(ValueError, match="same images"):
        head(torch.randn(2, 8, 32, 32), torch.randn(3, 16, 4, 4))
    with pytest.raises(ParameterError, match=r"^high_size 16 with 16 windows gives 4 px windows"):
        lf.nn.LNLHead(8, 16, 16, micro_config("reference"))
    with pytest.raises(ParameterError, match="^low_channels must be a positive int"):
        lf.nn.LNLHead(8, 0, 32)


def test_readme_example_runs_as_written():
    text = README.read_text()
    marker = "<!-- tests/test_nn.py runs this example -->"
    assert marker in text
    block = re.search(r"```python\n(.*?)```", text[text.index(marker):], re.S).group(1)
    namespace = {"__name__": "readme_example"}
    exec(compile(block, "README.md (drop-in example)", "exec"), namespace)
    out = namespace["out"]
    assert out.logits.shape == (8, 7) and torch.isfinite(namespace["loss"])


# ---- checkpoints of the flat layout ------------------------------------------------------------
def test_flat_layout_checkpoints_load_with_a_warning_and_give_the_same_outputs():
    """A state_dict saved before the blocks were modules (keys simplenets.*, nonlocal_branch.*,
    head.<i>.*), with the outputs that model gave, recorded at the time."""
    saved = torch.load(FIXTURE, weights_only=True)
    assert any(key.startswith("simplenets.") for key in saved["model"])
    model = lf.LNLAttenNet(lf.LNLConfig.from_dict(saved["config"])).eval()
    with pytest.warns(UserWarning, match="flat key layout.*migrated"):
        model.load_state_dict(saved["model"])
    with torch.no_grad():
        out = model(saved["input"])
    assert torch.allclose(out.logits, saved["logits"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.nonlocal_weights, saved["nonlocal_weights"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(out.local_weights, saved["local_weights"], rtol=1e-5, atol=1e-7)
    # The parameter order is the flat layout's, so an optimizer state saved then still lines up.
    flat_shapes = [tuple(v.shape) for k, v in saved["model"].items()]
    assert [tuple(p.shape) for p in model.state_dict().values()] == flat_shapes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current state_dict loads silently
        model.load_state_dict(model.state_dict())


def test_inference_loader_migrates_flat_checkpoints(tmp_path):
    saved = torch.load(FIXTURE, weights_only=True)
    path = tmp_path / "old.pt"
    torch.save({"model": saved["model"], "config": saved["config"], "format": "lnlatten_fast/2"}, path)
    from lnlatten_fast.training.inference import load_model

    with pytest.warns(UserWarning, match="flat key layout"):
        model, _ = load_model(path, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(model(saved["input"]).logits, saved["logits"], rtol=1e-5, atol=1e-6)
