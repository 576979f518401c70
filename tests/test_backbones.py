"""The LNL head on other backbones (lnlatten_fast.backbones): the two levels, training through
them, torch.compile, weights files, the config and checkpoint round trip, and the train CLI.

The backbones are torch-only stand-ins with the submodule names and strides of ResNet-18,
ConvNeXt-T and ViT-S (tests/backbone_standins.py)."""

import copy
import json
import sys

import pytest
import torch
import torch.nn.functional as F

import backbone_standins as standins
from helpers import read_metrics
from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast import export as export_cli
from lnlatten_fast import train as train_cli
from lnlatten_fast.backbones import BackboneFeatures, build_backbone, load_backbone_weights
from lnlatten_fast.config import LNLConfig
from lnlatten_fast.errors import MissingPathError, ParameterError
from lnlatten_fast.geometry import PatchGeometry
from lnlatten_fast.model import LNLAttenNet, lnl_loss
from lnlatten_fast.training import checkpoint

SPEC = "module:backbone_standins:{}"


def backbone_config(name, **changes):
    return LNLConfig.tiny(backbone=SPEC.format(name), **changes)


@pytest.mark.parametrize("name, levels, high, low", [
    # (channels, side) at 96 px: ResNet's layer1 is 1/4 of the input and layer4 1/32; ConvNeXt's
    # stage 0 1/4 and stage 3 1/32; the ViT's 16 px patches give a 6 x 6 token grid at every block.
    ("resnet18_standin", ("layer1", "layer4"), (8, 24), (64, 3)),
    ("convnext_tiny_standin", ("stages.0", "stages.3"), (8, 24), (64, 3)),
    ("vit_small_standin", ("blocks.2", "blocks.11"), (16, 20), (16, 6)),
])
def test_default_levels_and_their_shapes(name, levels, high, low):
    torch.manual_seed(0)
    body = getattr(standins, name)() if name != "vit_small_standin" else standins.ViTSmallStandin(image_size=96)
    # 20 px is the smallest map whose 16 windows are 8 px, SimpleNet's minimum; 19 px gives 7 px.
    assert PatchGeometry.for_image(20, 16).patch == 8 and PatchGeometry.for_image(19, 16).patch < 8
    features = BackboneFeatures(body, None, image_size=96, min_high_size=20)
    assert features.levels == levels
    got_high, got_low = features(torch.randn(2, 3, 96, 96))
    assert tuple(got_high.shape) == (2, *high[:1], high[1], high[1])
    assert tuple(got_low.shape) == (2, *low[:1], low[1], low[1])


def test_vit_tokens_become_a_grid_without_the_cls_token():
    torch.manual_seed(0)
    vit = standins.ViTSmallStandin(image_size=64)
    features = BackboneFeatures(vit, ("blocks.2", "blocks.11"), image_size=64, min_high_size=20)
    x = torch.randn(2, 3, 64, 64)
    high, low = features(x)
    # By hand: the ViT's own steps up to each block, the cls token dropped, tokens row-major.
    tokens = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(x)], dim=1) + vit.pos_embed
    after_2 = vit.blocks[:3](tokens)
    after_11 = vit.blocks[3:](after_2)
    as_grid = lambda t: t[:, 1:].reshape(2, 4, 4, 16).permute(0, 3, 1, 2)  # noqa: E731
    torch.testing.assert_close(low, as_grid(after_11))
    torch.testing.assert_close(high, F.interpolate(as_grid(after_2), size=(20, 20), mode="bilinear"))


def test_levels_override_and_unknown_names():
    body = standins.resnet18_standin()
    features = BackboneFeatures(body, "layer2, layer3", image_size=64)
    assert features.levels == ("layer2", "layer3")
    assert (features.high_channels, features.high_size, features.low_channels, features.low_size) == (16, 8, 32, 4)
    with pytest.raises(ParameterError, match=r"backbone_levels names 'layer9'.*conv1, bn1.*layer4"):
        BackboneFeatures(standins.resnet18_standin(), ("layer1", "layer9"), image_size=64)
    with pytest.raises(ParameterError, match="backbone_levels must be given for a Sequential"):
        BackboneFeatures(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), None, image_size=64)
    with pytest.raises(ParameterError, match="backbone_levels must name two submodules"):
        LNLConfig.tiny(backbone=SPEC.format("resnet18_standin"), backbone_levels="layer1")


def test_head_trains_through_the_backbone():
    """Loss goes down on a fixed batch; gradients reach the backbone's first layer; the
    classifier after layer4 (unused by the levels) is frozen."""
    torch.manual_seed(0)
    model = LNLAttenNet(backbone_config("resnet18_standin", image_size=32))
    assert not model.backbone.body.fc.weight.requires_grad
    assert model.backbone.unused_parameters == ("fc.weight", "fc.bias")
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 7
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = lnl_loss(model(x).logits, y, model)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0]


def test_adapter_compiles_with_fullgraph():
    torch.manual_seed(0)
    features = BackboneFeatures(standins.vit_small_standin(), None, image_size=64, min_high_size=20).eval()
    x = torch.randn(2, 3, 64, 64)
    eager = features(x)
    compiled = torch.compile(features, fullgraph=True, backend="aot_eager")(x)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_a_copy_of_the_adapter_captures_its_own_levels():
    """Export deep-copies the model: the copy's hooks must fill the copy's store."""
    features = BackboneFeatures(standins.resnet18_standin(), None, image_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(copy.deepcopy(features)(x), features(x)):
        torch.testing.assert_close(a, b)


def test_weights_file_is_loaded_and_reported_in_one_line(tmp_path, capsys):
    """The model keeps the report (the trainer prints it, once, on the main process); the
    library prints nothing."""
    torch.manual_seed(1)
    donor = standins.resnet18_standin()
    saved = donor.state_dict()
    del saved["layer4.1.bn2.running_var"]
    saved["extra.weight"] = torch.ones(3)
    path = tmp_path / "resnet.pt"
    torch.save(saved, path)
    torch.manual_seed(2)
    model = LNLAttenNet(backbone_config("resnet18_standin", backbone_weights=str(path)))
    assert capsys.readouterr().out == ""
    report = model.backbone_weights_report
    assert "\n" not in report
    assert "missing 1 (layer4.1.bn2.running_var)" in report and "unexpected 1 (extra.weight)" in report

    loaded = model.backbone.body.state_dict()
    for key, value in donor.state_dict().items():
        if key != "layer4.1.bn2.running_var":
            assert torch.equal(loaded[key], value), key
    assert torch.equal(loaded["layer4.1.bn2.running_var"], torch.ones(64))  # BatchNorm's own init, kept


def test_weights_file_errors(tmp_path):
    with pytest.raises(MissingPathError, match="backbone_weights .*nowhere.pt does not exist"):
        LNLAttenNet(backbone_config("resnet18_standin", backbone_weights=str(tmp_path / "nowhere.pt")))
    other = tmp_path / "convnext.pt"
    torch.save({"conv1.weight": torch.zeros(1, 1, 1, 1)}, other)
    with pytest.raises(ParameterError, match=r"backbone_weights .*conv1.weight has shape \(1, 1, 1, 1\)"):
        load_backbone_weights(standins.resnet18_standin(), other)
    with pytest.raises(ParameterError, match="backbone_levels needs a `backbone` other than unet"):
        LNLConfig.tiny(backbone_levels="a,b")


def test_backbone_specs_and_missing_libraries(monkeypatch):
    with pytest.raises(ParameterError, match="backbone must be unet, module:"):
        LNLConfig.tiny(backbone="resnet18")
    with pytest.raises(ParameterError, match="cannot import no_such_module"):
        build_backbone("module:no_such_module:build")
    with pytest.raises(ParameterError, match="gave a str, not an nn.Module"):
        build_backbone(SPEC.format("not_a_module"))
    for library in ("timm", "torchvision"):
        monkeypatch.setitem(sys.modules, library, None)  # import fails as when it is not installed
        with pytest.raises(ParameterError, match=rf"{library}:resnet18 needs {library}.*\[{library}\] extra"):
            build_backbone(f"{library}:resnet18")


def test_the_models_windows_on_the_image_are_the_heads_scaled_up():
    """What predict's heat maps, the localisation summary, TensorBoard and analyze draw and
    occlude: the head's windows (8 px every 4 on the stand-in's 20 px layer1 at 80 px, by hand)
    times 4, not the config's own 80 px lattice (26 px every 18)."""
    model = LNLAttenNet(backbone_config("resnet18_standin", image_size=80), load_backbone_weights=False)
    assert model.head.geometry == PatchGeometry(20, 4, 8, 4)
    assert model.geometry == PatchGeometry(80, 4, 32, 16)
    assert LNLConfig.tiny(image_size=80).geometry != model.geometry


def test_config_and_state_dict_rebuild_the_same_network():
    torch.manual_seed(0)
    model = LNLAttenNet(backbone_config("convnext_tiny_standin", backbone_levels=("stages.1", "stages.3"))).eval()
    config = LNLConfig.from_dict(model.config.to_dict())
    assert config.backbone_levels == "stages.1,stages.3"
    torch.manual_seed(1)
    rebuilt = LNLAttenNet(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x).logits, model(x).logits, rtol=0, atol=0)


def tiny_backbone_run(tmp_path, *flags):
    """train's arguments for one epoch on the ResNet-18 stand-in, 40 + 16 synthetic faces at 32 px."""
    return ["--backbone", SPEC.format("resnet18_standin"), "--image-size", "32", "--synthetic-train", "40",
            "--synthetic-test", "16", "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"),
            "--trace-every", "0", "--progress", "none", "--epochs", "1", *flags]


def evaluates_and_exports(run, tmp_path, capsys):
    """evaluate finds the accuracy the run recorded, and export writes a pt2 file, from the run alone."""
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(result["recorded_test_accuracy"], abs=1e-9)
    assert export_cli.main([str(run), "--format", "pt2", "--out", str(tmp_path / "model.pt2")]) == 0
    assert (tmp_path / "model.pt2").stat().st_size > 0


def test_train_evaluate_export_and_resume_on_a_backbone(tmp_path, capsys):
    """The train CLI on the ResNet-18 stand-in with a weights file: trains, resumes, and then
    evaluates and exports from the checkpoint alone (the weights file gone)."""
    torch.manual_seed(5)
    weights = tmp_path / "resnet.pt"
    torch.save(standins.resnet18_standin().state_dict(), weights)
    run = tmp_path / "run"
    assert train_cli.main(tiny_backbone_run(tmp_path, "--backbone-weights", str(weights), "--out", str(run))) == 0
    tensors = len(standins.resnet18_standin().state_dict())
    report = f"backbone weights {weights}: loaded {tensors} of the backbone's {tensors} tensors; missing 0; unexpected 0"
    assert capsys.readouterr().out.count(report) == 1  # not again for the memory estimate's meta-device model
    after_one = checkpoint.load(run / "last.pt")["model"]
    weights.unlink()  # resuming, evaluating and exporting need only the checkpoint
    assert train_cli.main(["--resume", "--epochs", "2", "--out", str(run)]) == 0
    payload = checkpoint.load(run / "last.pt")
    assert len(payload["history"]) == 2 and len(read_metrics(run)) == 2
    assert not torch.equal(payload["model"]["backbone.body.conv1.weight"], after_one["backbone.body.conv1.weight"])
    assert payload["config"]["backbone"] == SPEC.format("resnet18_standin")
    assert payload["config"]["backbone_weights"] == str(weights)
    evaluates_and_exports(run, tmp_path, capsys)


def test_backbone_lr_scale_and_freezing():
    """The backbone's groups get lr x scale (the head's keep lr, every group its weight decay);
    a frozen backbone is left as it is by a step that changes the head."""
    from lnlatten_fast.backbones import backbone_parameters, scale_backbone_lr, set_backbone_trainable
    from lnlatten_fast.training.step import build_optimizer

    torch.manual_seed(0)
    model = LNLAttenNet(backbone_config("resnet18_standin", image_size=32))
    optimizer = build_optimizer(model, 1e-3, 0.01, fused=False)
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    scale_backbone_lr(optimizer, model, 0.1)
    backbone = {id(p) for p in model.backbone.body.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(1e-4 if in_backbone.pop() else 1e-3)
        assert {decays[id(p)] for p in group["params"]} == {group["weight_decay"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(decays)

    set_backbone_trainable(model, False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.zero_grad()
    lnl_loss(model(torch.randn(4, 3, 32, 32)).logits, torch.arange(4), model).backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[f"backbone.body.{n}"], before[f"backbone.body.{n}"])
               for n, _ in model.backbone.body.named_parameters())
    assert not torch.equal(after["head.classifier.0.weight"], before["head.classifier.0.weight"])
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in backbone_parameters(model)) and not model.backbone.body.fc.weight.requires_grad


def test_backbone_training_settings_are_checked():
    from lnlatten_fast.training.settings import TrainSettings

    with pytest.raises(ParameterError, match="freeze_backbone_epochs needs a `backbone` other than unet"):
        TrainSettings(freeze_backbone_epochs=1, epochs=2).validate()
    with pytest.raises(ParameterError, match="backbone_lr_scale must be a positive number"):
        TrainSettings(model=backbone_config("resnet18_standin"), backbone_lr_scale=0.0).validate()
    with pytest.raises(ParameterError, match=r"freeze_backbone_epochs must be an int in \[0, `epochs` = 2\)"):
        TrainSettings(model=backbone_config("resnet18_standin"), freeze_backbone_epochs=2, epochs=2).validate()


def test_train_gives_the_backbone_its_lr_scale(tmp_path):
    """--backbone-lr-scale reaches the optimizer: last.pt's groups holding the backbone's
    parameters run at 0.25 x the others' lr (needs trainer.fit to call scale_backbone_lr)."""
    run = tmp_path / "run"
    assert train_cli.main(tiny_backbone_run(tmp_path, "--backbone-lr-scale", "0.25", "--lr", "0.002",
                                            "--out", str(run))) == 0
    groups = checkpoint.load(run / "last.pt")["optimizer"]["param_groups"]
    starts = sorted({float(g["initial_lr"]) for g in groups})  # each group's lr before the schedule
    assert starts == pytest.approx([0.002 * 0.25, 0.002])


#: One batch of 16 to train on, 8 images to test: enough where only a step's effect is checked.
SMALLER = ("--synthetic-train", "16", "--synthetic-test", "8")


def saved_standin(path, seed=11):
    """A ResNet-18 stand-in's state_dict saved at `path`, its BatchNorm statistics random (so
    that "as loaded" differs from BatchNorm's own init); returns the state_dict."""
    torch.manual_seed(seed)
    state = standins.resnet18_standin().state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    torch.save(state, path)
    return state


def test_parameters_the_builder_froze_stay_frozen(tmp_path):
    """A `module:` builder that froze conv1 and layer1: one epoch trains layer4, not them."""
    weights = tmp_path / "resnet.pt"
    saved = saved_standin(weights)
    run = tmp_path / "run"
    argv = tiny_backbone_run(tmp_path, "--backbone-weights", str(weights), "--out", str(run), *SMALLER)
    argv[argv.index("--backbone") + 1] = SPEC.format("resnet18_frozen_stem_standin")
    assert train_cli.main(argv) == 0
    trained = checkpoint.load(run / "last.pt")["model"]
    frozen = ["conv1.weight", *(f"layer1.{n}" for n, _ in standins.resnet18_standin().layer1.named_parameters())]
    for name in frozen:
        assert torch.equal(trained[f"backbone.body.{name}"], saved[name]), name
    assert not torch.equal(trained["backbone.body.layer4.0.conv1.weight"], saved["layer4.0.conv1.weight"])


def test_freeze_backbone_epochs_keeps_the_backbone_as_loaded(tmp_path, monkeypatch):
    """--freeze-backbone-epochs 1 of 2: after epoch 1 the backbone (weights and BatchNorm
    statistics) is the file's while the head has trained; after epoch 2 the backbone has trained.
    The model is seen at the start of each epoch, where the trainer sets the backbone trainable."""
    from lnlatten_fast import backbones

    seen = []
    original = backbones.set_backbone_trainable

    def spy(model, trainable):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        original(model, trainable)

    monkeypatch.setattr(backbones, "set_backbone_trainable", spy)
    weights = tmp_path / "resnet.pt"
    saved = {f"backbone.body.{k}": v for k, v in saved_standin(weights).items()}
    run = tmp_path / "run"
    assert train_cli.main(tiny_backbone_run(tmp_path, "--backbone-weights", str(weights), "--out", str(run),
                                            "--freeze-backbone-epochs", "1", "--epochs", "2", *SMALLER)) == 0
    assert len(seen) == 2
    before, after_one, after_two = seen[0], seen[1], checkpoint.load(run / "last.pt")["model"]
    for key, value in saved.items():
        assert torch.equal(after_one[key], value), key
    head = "head.classifier.0.weight"
    assert not torch.equal(after_one[head], before[head])
    for key in ("backbone.body.conv1.weight", "backbone.body.bn1.running_mean"):
        assert not torch.equal(after_two[key], saved[key]), key


def test_set_backbone_trainable_keeps_a_frozen_backbone_in_eval_mode():
    from lnlatten_fast.backbones import set_backbone_trainable

    model = LNLAttenNet(backbone_config("resnet18_standin", image_size=32))
    set_backbone_trainable(model, False)
    model.train()
    assert model.head.training and not model.backbone.body.training and not model.backbone.body.bn1.training
    set_backbone_trainable(model, True)
    assert model.backbone.body.bn1.training
    model.eval()
    set_backbone_trainable(model, True)
    assert not model.backbone.body.bn1.training


@pytest.mark.parametrize("flags, expected", [
    (["--backbone", "module:torch.nn:Conv2d"],
     "error: --backbone module:torch.nn:Conv2d: calling Conv2d() failed (TypeError: "),
    # The stand-in ViT's position embedding holds a 64 px image's tokens.
    (["--backbone", SPEC.format("vit_small_standin")],
     f"error: --backbone {SPEC.format('vit_small_standin')}: its forward on a 3 x 32 x 32 zero image "
     "(--image-size 32) failed (RuntimeError: "),
    (["--backbone-levels", "layer4,layer1"],
     "error: --backbone-levels layer4's map (1 px) is smaller than layer1's (8 px) at 32 px"),
    (["--backbone-levels", "layer2,layer2"], "error: --backbone-levels names one module twice (layer2, layer2)"),
    (["--backbone-weights", "nowhere.pt"], "error: --backbone-weights nowhere.pt does not exist"),
], ids=["build-fails", "dry-run-fails", "levels-reversed", "levels-same", "weights-missing"])
def test_a_backbone_that_cannot_work_is_one_error_line(tmp_path, capsys, flags, expected):
    """Refused before the run directory is written, as one line naming the flag."""
    argv = tiny_backbone_run(tmp_path, "--out", str(tmp_path / "run"))
    if flags[0] == "--backbone":
        argv[argv.index("--backbone") + 1] = flags[1]
        flags = []
    assert train_cli.main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "run").exists()


def test_backbone_weights_are_checked_by_the_settings_unless_resuming(tmp_path):
    from lnlatten_fast.training.settings import TrainSettings

    missing = backbone_config("resnet18_standin", backbone_weights=str(tmp_path / "nowhere.pt"))
    with pytest.raises(MissingPathError, match="backbone_weights .*nowhere.pt does not exist"):
        TrainSettings(model=missing).validate()
    TrainSettings(model=missing, resume=True).validate()  # the weights come from last.pt


def test_weights_file_problems_are_one_line(tmp_path):
    body = standins.resnet18_standin()
    with pytest.raises(ParameterError, match=r"backbone_weights .* is a directory, not a state_dict file"):
        load_backbone_weights(body, tmp_path)
    pickled_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # the module, not its state_dict
    with pytest.raises(ParameterError, match=r"module.pt is not a readable state_dict \(UnpicklingError: ") as error:
        load_backbone_weights(body, pickled_module)
    assert "\n" not in str(error.value)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ParameterError, match=r"unrelated.pt holds none of the backbone's \d+ tensors "
                                             r"\(its names: encoder.weight; the backbone's: conv1.weight"):
        load_backbone_weights(body, unrelated)


@pytest.mark.parametrize("wrap, how", [
    (lambda state: {"state_dict": state, "epoch": 3}, "(unwrapped 'state_dict')"),
    (lambda state: {"model": state, "optimizer": {}}, "(unwrapped 'model')"),
    (lambda state: {f"module.{k}": v for k, v in state.items()}, "(stripped 'module.' from every name)"),
    (lambda state: {"model": {f"module.{k}": v for k, v in state.items()}},
     "(unwrapped 'model'; stripped 'module.' from every name)"),
], ids=["state_dict", "model", "ddp", "model+ddp"])
def test_wrapped_weights_files_are_unwrapped(tmp_path, wrap, how):
    state = saved_standin(tmp_path / "plain.pt")
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(state), path)
    body = standins.resnet18_standin()
    report = load_backbone_weights(body, path)
    assert report.startswith(f"backbone weights {path} {how}: loaded {len(state)} of the backbone's {len(state)}")
    for key, value in body.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_report_counts_add_up_without_num_batches_tracked(tmp_path):
    """A file without BatchNorm's num_batches_tracked (saved by an older torch): those count as
    missing, so loaded + missing is the backbone's tensor count (here 20 BatchNorms)."""
    state = saved_standin(tmp_path / "plain.pt")
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "trimmed.pt"
    torch.save(trimmed, path)
    total = len(state)
    assert total - len(trimmed) == 20
    report = load_backbone_weights(standins.resnet18_standin(), path)
    assert f"loaded {total - 20} of the backbone's {total} tensors; missing 20 (bn1.num_batches_tracked, " in report


@pytest.mark.parametrize("name, image_size", [("convnext_tiny_standin", 32), ("vit_small_standin", 64)])
def test_train_evaluate_and_export_on_the_other_standins(tmp_path, capsys, name, image_size):
    run = tmp_path / "run"
    argv = tiny_backbone_run(tmp_path, "--out", str(run), *SMALLER)
    argv[argv.index("--backbone") + 1] = SPEC.format(name)
    argv[argv.index("--image-size") + 1] = str(image_size)
    assert train_cli.main(argv) == 0
    evaluates_and_exports(run, tmp_path, capsys)


# Shapes at 224 px, from the libraries' architectures: ResNet-18's layer1 (64, 1/4) and layer4
# (512, 1/32); ConvNeXt-T's first stage (96, 1/4) and last (768, 1/32); ViT-S/16's 14 x 14
# tokens of width 384, the high level brought to 20 px for 16 windows.
REAL_FAMILIES = [
    ("timm:resnet18", (64, 56), (512, 7)),
    ("timm:convnext_tiny", (96, 56), (768, 7)),
    ("timm:vit_small_patch16_224", (384, 20), (384, 14)),
    ("torchvision:resnet18", (64, 56), (512, 7)),
    ("torchvision:convnext_tiny", (96, 56), (768, 7)),
]


def import_family(library: str):
    """The library, or a skip that names it as not tested and why (-rs prints it). Where the
    environment promises the families (LNLATTEN_REQUIRE_FAMILIES=1: CI's second environment,
    gpu_check.sh), a failed import fails the test instead."""
    import importlib
    import os

    try:
        return importlib.import_module(library)
    except Exception as error:  # noqa: BLE001 - torchvision against the CPU torch: RuntimeError
        reason = f"{library} not tested: it does not import here ({type(error).__name__}: {error})"
        if os.environ.get("LNLATTEN_REQUIRE_FAMILIES") == "1":
            pytest.fail(f"{reason}, and LNLATTEN_REQUIRE_FAMILIES=1 says it must")
        pytest.skip(reason)


@pytest.mark.parametrize("spec, high, low", REAL_FAMILIES)
def test_real_library_families(spec, high, low):
    """Where timm / torchvision import (CI's second environment, gpu_check.sh), their models
    with the default levels; elsewhere skipped with the import error as the reason (-rs)."""
    import_family(spec.split(":")[0])
    torch.manual_seed(0)
    model = LNLAttenNet(LNLConfig.tiny(image_size=224, backbone=spec)).eval()
    features = model.backbone
    assert (features.high_channels, features.high_size) == high
    assert (features.low_channels, features.low_size) == low
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 224, 224)).logits.shape) == (1, 7)


def test_real_timm_vit_runs_at_the_runs_image_size_and_loads_a_224_px_state_dict(tmp_path):
    """timm builds ViT-S/16 for 224 px and refuses 96 px unless its position embedding is
    resampled; a file saved from the library's own 224 px model still loads whole."""
    timm = import_family("timm")
    weights = tmp_path / "vit.pt"
    torch.save(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict(), weights)
    model = LNLAttenNet(LNLConfig.tiny(image_size=96, backbone="timm:vit_small_patch16_224",
                                       backbone_weights=str(weights))).eval()
    assert "missing 0; unexpected 0" in model.backbone_weights_report
    assert (model.backbone.low_channels, model.backbone.low_size) == (384, 6)  # 96 / 16 tokens a side
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 3, 96, 96)).logits.shape) == (2, 7)


def library_resnet18(library):
    if library == "torchvision":
        return import_family("torchvision").models.resnet18(weights=None)
    return import_family("timm").create_model("resnet18", pretrained=False)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_real_family_trains_from_a_weights_file_and_evaluates(library, tmp_path, capsys):
    """The backbone route as the README gives it, on the library's own ResNet-18: weights from a
    local file (equal to the file's once loaded), one epoch, then evaluate from the run alone."""
    torch.manual_seed(7)
    donor = library_resnet18(library)
    weights = tmp_path / "resnet18.pt"
    torch.save(donor.state_dict(), weights)
    config = LNLConfig.tiny(image_size=32, backbone=f"{library}:resnet18", backbone_weights=str(weights))
    torch.manual_seed(8)
    loaded = LNLAttenNet(config).backbone.body.state_dict()
    saved = donor.state_dict()
    assert set(loaded) <= set(saved)  # timm's builder drops the classifier (fc), which the file has
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key
    run = tmp_path / "run"
    argv = tiny_backbone_run(tmp_path, "--out", str(run))
    argv[argv.index("--backbone") + 1] = f"{library}:resnet18"
    assert train_cli.main([*argv, "--backbone-weights", str(weights)]) == 0
    assert checkpoint.load(run / "last.pt")["config"]["backbone"] == f"{library}:resnet18"
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(result["recorded_test_accuracy"], abs=1e-9)
