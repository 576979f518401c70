"""LNLAttenNet against the paper's tables, the four variants, init, loss and state_dict."""

import pytest
import torch
import torch.nn.functional as F

import lnlatten_fast as lf


@pytest.fixture(scope="module")
def paper_run():
    torch.manual_seed(0)
    model = lf.LNLAttenNet(lf.LNLConfig(backend="reference")).eval()
    x = torch.randn(2, 3, 144, 144)
    with torch.no_grad():
        out = model(x, return_features=True)
    return model, out


def test_paper_preset_shapes(paper_run):
    _, out = paper_run
    feats = out.features
    assert out.logits.shape == (2, 7)
    assert feats["f5"].shape == (2, 1024, 9, 9)  # conv5-2
    assert feats["f9"].shape == (2, 64, 144, 144)  # conv9-2
    assert feats["simplenet"].shape == (2, 16, 256, 6, 6)  # table II, every patch
    assert feats["local_features"].shape == (2, 16, 9216)
    assert feats["g_star"].shape == (2, 16, 512)  # 8192-d g*
    assert feats["joint"].shape == (2, 17408)
    assert out.nonlocal_weights.shape == (2, 16) and out.local_weights.shape == (2, 16)
    assert torch.allclose(out.nonlocal_weights.sum(dim=1), torch.ones(2), atol=1e-5)
    assert ((out.local_weights > 0) & (out.local_weights < 1)).all()


def test_paper_preset_layer_shapes(paper_run):
    model, _ = paper_run
    simplenet = [tuple(conv.weight.shape) for conv in model.head.patches.convs]
    assert simplenet == [
        (16, 64, 64, 3, 3), (16, 64, 64, 3, 3), (16, 128, 64, 3, 3),
        (16, 128, 128, 3, 3), (16, 256, 128, 3, 3), (16, 256, 256, 3, 3),
    ]
    la = model.local_attention
    assert [tuple(c.weight.shape) for c in la.convs] == [
        (16, 256, 256, 3, 3), (16, 128, 256, 1, 1), (16, 128, 128, 3, 3), (16, 64, 128, 1, 1),
    ]
    assert tuple(la.fc1.weight.shape) == (16, 64, 256) and tuple(la.fc2.weight.shape) == (16, 1, 64)
    attention = model.head.nonlocal_attention
    for proj in (attention.query, attention.key, attention.value):
        assert tuple(proj.weight.shape) == (512, 1024, 1, 1)  # table I
    assert [layer.out_features for layer in model.head.classifier if isinstance(layer, torch.nn.Linear)] == [1024, 512, 7]


def test_eq1_and_eq2_hold(paper_run):
    """Recompute g*, f_en and the logits from the parts the model exposes."""
    model, out = paper_run
    feats = out.features
    g = lf.nn.as_regions(lf.nn.pool_to_grid(model.head.global_convs(feats["f5"]), 4))
    q, k, v = model.head.nonlocal_attention.qkv(feats["f5"])
    s, w_g = lf.ops.l1_nonlocal_attention(q, k, v, backend="reference")
    assert torch.allclose(feats["g_star"], 0.3 * g + 0.7 * s, rtol=1e-4, atol=1e-5)
    assert torch.allclose(w_g, out.nonlocal_weights)
    f_en = sum(
        (out.nonlocal_weights[:, i] * out.local_weights[:, i])[:, None] * feats["local_features"][:, i]
        for i in range(16)
    )
    assert torch.allclose(feats["joint"][:, 8192:], f_en, rtol=1e-4, atol=1e-6)
    assert torch.allclose(model.head.classifier(feats["joint"]), out.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", lf.VARIANTS)
def test_variants(variant):
    torch.manual_seed(1)
    cfg = lf.LNLConfig.tiny(variant=variant, backend="reference")
    model = lf.LNLAttenNet(cfg)
    out = model(torch.randn(3, 3, 64, 64))
    assert out.logits.shape == (3, 7)
    if variant in ("local", "simple"):  # Model-Local, Model-S: no non-local attention
        assert torch.equal(out.nonlocal_weights, torch.full((3, 16), 1 / 16))
        assert model.head.nonlocal_attention is None
    else:
        assert not torch.equal(out.nonlocal_weights, torch.full((3, 16), 1 / 16))
    if variant in ("nonlocal", "simple"):  # Model-NonLocal, Model-S: no local attention
        assert torch.equal(out.local_weights, torch.ones(3, 16))
        assert model.local_attention is None
    else:
        assert ((out.local_weights > 0) & (out.local_weights < 1)).all()
    lf.lnl_loss(out.logits, torch.tensor([0, 1, 2]), model).backward()
    assert all(p.grad is not None for p in model.parameters())  # nothing dead in the graph


@pytest.mark.parametrize("num_patches,overlap", [(4, None), (9, None), (25, None), (36, None), (16, 4), (16, 24)])
def test_other_geometries(num_patches, overlap):
    cfg = lf.LNLConfig.tiny(image_size=144, num_patches=num_patches, overlap=overlap, backend="reference")
    model = lf.LNLAttenNet(cfg)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 144, 144), return_features=True)
    assert out.features["simplenet"].shape == (1, num_patches, 32, 6, 6)
    assert out.features["joint"].shape == (1, cfg.joint_feature_dim) == (1, 64 * num_patches + 32 * 36)
    assert torch.allclose(out.nonlocal_weights.sum(1), torch.ones(1), atol=1e-5)


def test_shared_local_attention_has_one_set_of_weights():
    model = lf.LNLAttenNet(lf.LNLConfig.tiny(share_local_attention=True))
    assert model.local_attention.convs[0].weight.shape[0] == 1
    out = model(torch.randn(2, 3, 64, 64))
    assert out.local_weights.shape == (2, 16)


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_init_per_patch_fans_and_zero_biases(init):
    torch.manual_seed(0)
    model = lf.LNLAttenNet(lf.LNLConfig.tiny(init=init))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    # every patch's slice is initialised on its own fans (fan = 9 * channels)
    conv = model.head.patches.convs[2]
    c_out, c_in = conv.weight.shape[1:3]
    if init == "xavier":  # U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        bound = (6 / (9 * c_in + 9 * c_out)) ** 0.5
    else:  # He-uniform: a = sqrt(6 / fan_in)
        bound = (6 / (9 * c_in)) ** 0.5
    for group in conv.weight:
        assert group.abs().max() <= bound and group.abs().max() > 0.8 * bound
    assert not torch.equal(conv.weight[0], conv.weight[1])


def test_paper_preset_uses_xavier():
    assert lf.LNLConfig().init == "xavier"


def test_loss_is_cross_entropy_plus_l2_of_weights_only():
    model = lf.LNLAttenNet(lf.LNLConfig.tiny())
    logits, target = torch.randn(4, 7), torch.tensor([0, 3, 6, 2])
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    assert len(weights) == len(model.regularized_weights())
    expected = F.cross_entropy(logits, target) + 1e-4 * sum((w**2).sum() for w in weights)
    assert torch.allclose(lf.lnl_loss(logits, target, model), expected)
    with torch.no_grad():
        model.head.classifier[0].bias.fill_(100.0)  # biases are not penalised
    assert torch.allclose(lf.lnl_loss(logits, target, model), expected)
    assert torch.allclose(lf.lnl_loss(logits, target, model, l2_lambda=0.0), F.cross_entropy(logits, target))


def test_state_dict_round_trip_and_backend_switch():
    torch.manual_seed(0)
    a = lf.LNLAttenNet(lf.LNLConfig.tiny()).eval()
    b = lf.LNLAttenNet(lf.LNLConfig.tiny(backend="reference")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a.set_backend("reference")(x).logits, b(x).logits)
    with pytest.raises(ValueError, match="backend must be one of"):
        a.set_backend("cudnn")


def test_set_backend_updates_the_config():
    """model.config says which backend runs (it used to keep the construction-time name)."""
    cfg = lf.LNLConfig.tiny()
    model = lf.LNLAttenNet(cfg)
    assert model.set_backend("reference") is model
    assert model.config.backend == "reference" == model.backend
    assert cfg.backend == "auto"  # the caller's config is left as it was
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("cudnn")
    assert model.config.backend == "reference" == model.backend


def test_bad_input_shape_is_named():
    model = lf.LNLAttenNet(lf.LNLConfig.tiny())
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 64, 64\)"):
        model(torch.randn(1, 3, 144, 144))
    with pytest.raises(TypeError, match="config must be an LNLConfig"):
        lf.LNLAttenNet({"image_size": 64})
