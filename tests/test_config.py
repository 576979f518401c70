import pytest

import lnlatten_fast as lf


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
