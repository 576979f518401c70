import torch
import pytest

import lnlatten_fast as lf
from lnlatten_fast.errors import ParameterError, cli_message


def test_paper_preset():
    cfg = lf.LNLConfig()
    assert (cfg.image_size, cfg.num_patches, cfg.alpha, cfg.variant, cfg.num_classes) == (144, 16, 0.7, "full", 7)
    assert cfg.geometry == lf.PatchGeometry(144, 4, 48, 32)
    assert cfg.global_feature_dim == 8192
    assert cfg.local_feature_dim == 9216
    assert cfg.joint_feature_dim == 17408
    assert cfg.l2_lambda == 1e-4


def test_tiny_preset_divides_widths_by_eight():
    paper, tiny = lf.LNLConfig(), lf.LNLConfig.tiny()
    assert tiny.unet_widths == tuple(w // 8 for w in paper.unet_widths)
    assert tiny.simplenet_widths == tuple(w // 8 for w in paper.simplenet_widths)
    assert tiny.attention_dim == paper.attention_dim // 8
    assert tiny.head_widths == tuple(w // 8 for w in paper.head_widths)


def test_round_trip_through_dict():
    cfg = lf.LNLConfig.tiny(variant="local", num_patches=9)
    assert lf.LNLConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(variant="global"), "variant"),
        (dict(backend="cuda"), "backend"),
        (dict(alpha=1.5), "alpha"),
        (dict(image_size=150), "image_size"),
        (dict(num_patches=10), "num_patches"),
        (dict(overlap=15), "image size"),
        (dict(head_widths=(10,)), "head_widths"),
        (dict(local_feature_size=4), "local_feature_size"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises((ValueError, TypeError), match=field):
        lf.LNLConfig(**changes)


def test_unknown_fields_rejected():
    with pytest.raises(ValueError, match="unknown LNLConfig fields"):
        lf.LNLConfig.from_dict({"image_size": 144, "colour": "blue"})


def test_attention_dim_rule_lives_in_validate():
    """eq. 1 adds flat(s) to g: with the non-local attention, attention_dim == global_width. The
    rule is LNLConfig's, so a bad config is refused before any model is built."""
    with pytest.raises(ParameterError, match="attention_dim must equal global_width") as error:
        lf.LNLConfig.tiny(attention_dim=32)
    assert error.value.parameter == "attention_dim"
    lf.LNLConfig.tiny(variant="local", attention_dim=32)  # no non-local attention: no rule
    cfg = lf.LNLConfig.tiny(variant="local", attention_dim=32)
    with pytest.raises(ValueError, match="attention_dim must equal global_width"):
        cfg.replace(variant="full")
    cfg.variant = "full"  # changed behind validate's back: the model re-validates
    with pytest.raises(ValueError, match="attention_dim must equal global_width"):
        lf.LNLAttenNet(cfg)


def test_one_preset_table():
    from lnlatten_fast.config import PRESETS

    assert list(PRESETS) == ["tiny", "paper"]
    assert PRESETS["paper"].config() == lf.LNLConfig() == lf.LNLConfig.paper()
    assert PRESETS["tiny"].config(alpha=0.5) == lf.LNLConfig.tiny(alpha=0.5) == lf.LNLConfig.preset("tiny", alpha=0.5)
    assert (PRESETS["paper"].batch_size, PRESETS["paper"].lr) == (64, 3e-4)
    assert (PRESETS["tiny"].batch_size, PRESETS["tiny"].lr) == (32, 1e-3)
    assert PRESETS["tiny"].config() is not PRESETS["tiny"].config()  # callers get their own copy
    with pytest.raises(ValueError, match="preset must be one of tiny, paper"):
        lf.LNLConfig.preset("huge")


def test_config_errors_name_the_field_as_a_parameter():
    with pytest.raises(ParameterError) as error:
        lf.LNLConfig(alpha=1.5)
    assert error.value.parameter == "alpha"
    assert cli_message(error.value).startswith("error: --alpha must lie in [0, 1]")


def test_natural_local_feature_size_follows_the_patch():
    """local_feature_size=None keeps SimpleNet's P // 8 map (no adaptive pooling), so f_i, the
    local-attention FC and the joint feature grow with the patch, as the paper's table VII says;
    pooled to 6 x 6 they do not."""
    from lnlatten_fast.model import LNLAttenNet, count_parameters

    def build(**changes):
        cfg = lf.LNLConfig.tiny(image_size=96, backend="reference", **changes)
        torch.manual_seed(0)
        return cfg, LNLAttenNet(cfg)

    counts = {}
    for overlap in (0, 12):  # P = 24 and 33: natural sides 3 and 4
        cfg, model = build(overlap=overlap, local_feature_size=None)
        assert cfg.local_feature_side == cfg.geometry.patch // 8
        out = model(torch.randn(2, 3, 96, 96), return_features=True)
        side = cfg.geometry.patch // 8
        assert out.features["simplenet"].shape[-2:] == (side, side)
        assert out.features["joint"].shape[1] == cfg.global_feature_dim + cfg.simplenet_widths[-1] * side**2
        counts[overlap] = count_parameters(model)
    assert counts[12] > counts[0]
    pooled = {overlap: count_parameters(build(overlap=overlap)[1]) for overlap in (0, 12)}
    assert pooled[0] == pooled[12]


def test_natural_size_below_five_pads_the_local_attention():
    """Two valid 3x3 convs would shrink a 4 x 4 f_i to nothing; padding keeps its side."""
    cfg = lf.LNLConfig(local_feature_size=None, num_patches=36)  # P = 34: 4 x 4
    assert (cfg.local_feature_side, cfg.local_attention_padding, cfg.local_attention_side) == (4, 1, 4)
    cfg = lf.LNLConfig(local_feature_size=None)  # P = 48: the paper's 6 x 6, valid convs
    assert (cfg.local_feature_side, cfg.local_attention_padding, cfg.local_attention_side) == (6, 0, 2)
    assert cfg.joint_feature_dim == lf.LNLConfig().joint_feature_dim == 17408
