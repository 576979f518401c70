"""`train --config FILE.json|toml`: every flag from a file, a run's own config.json included, the
command line overriding it, and one `error:` line naming --config and the file for a bad one."""

from __future__ import annotations

import json

import pytest

from helpers import read_metrics
from lnlatten_fast import train as train_cli

SMALL = ["--epochs", "1", "--image-size", "32", "--synthetic-train", "56", "--synthetic-test", "21",
         "--batch-size", "16", "--progress", "none"]


def run_settings(run_dir):
    return json.loads((run_dir / "config.json").read_text())["settings"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A run with flags off their defaults (a recipe, a model flag, the seed)."""
    root = tmp_path_factory.mktemp("config_file")
    out = root / "A"
    argv = [*SMALL, "--seed", "5", "--label-smoothing", "0.1", "--alpha", "0.5", "--overlap", "4",
            "--cache-dir", str(root / "cache"), "--out", str(out)]
    assert train_cli.main(argv) == 0
    return out


def test_a_runs_own_config_json_runs_the_same_experiment_again(first_run, capsys):
    again = first_run.parent / "B"
    assert train_cli.main(["--config", str(first_run / "config.json"), "--out", str(again)]) == 0
    original, rerun = run_settings(first_run), run_settings(again)
    assert rerun["out"] == str(again)
    assert {k: v for k, v in rerun.items() if k != "out"} == {k: v for k, v in original.items() if k != "out"}
    assert rerun["label_smoothing"] == 0.1 and rerun["seed"] == 5 and rerun["model"]["alpha"] == 0.5
    assert rerun["model"]["overlap"] == 4
    assert read_metrics(again) == read_metrics(first_run)


def test_the_command_line_overrides_the_file(first_run):
    changed = first_run.parent / "C"
    argv = ["--config", str(first_run / "config.json"), "--seed", "6", "--alpha", "0.6", "--out", str(changed)]
    assert train_cli.main(argv) == 0
    settings = run_settings(changed)
    assert settings["seed"] == 6 and settings["model"]["alpha"] == 0.6
    assert settings["label_smoothing"] == 0.1 and settings["model"]["overlap"] == 4


def test_a_toml_file_with_dashed_or_underscored_keys_and_a_model_table(tmp_path):
    config = tmp_path / "experiment.toml"
    config.write_text(
        'epochs = 1\nbatch-size = 16\nsynthetic_train = 56\nsynthetic-test = 21\nprogress = "none"\n'
        f'label-smoothing = 0.2\nclip_grad_norm = 1.5\ncache-dir = "{tmp_path / "cache"}"\n'
        '[model]\nimage-size = 32\nvariant = "local"\n'
    )
    out = tmp_path / "run"
    assert train_cli.main(["--config", str(config), "--out", str(out)]) == 0
    settings = run_settings(out)
    assert (settings["epochs"], settings["batch_size"], settings["synthetic_train"]) == (1, 16, 56)
    assert settings["label_smoothing"] == 0.2 and settings["clip_grad_norm"] == 1.5
    assert settings["model"]["image_size"] == 32 and settings["model"]["variant"] == "local"


def bad_config(tmp_path, capsys, text, name="bad.json", *extra):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    status = train_cli.main(["--config", str(path), "--out", str(tmp_path / "never"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"error: --config {path}: "), err
    assert not (tmp_path / "never").exists()
    return err[0]


def test_an_unknown_key_is_named(tmp_path, capsys):
    assert "learning_rate = 0.1" in bad_config(tmp_path, capsys, '{"epochs": 1, "learning_rate": 0.1}')


def test_a_bad_value_names_the_flag(tmp_path, capsys):
    line = bad_config(tmp_path, capsys, '{"epochs": "many"}')
    assert "--epochs" in line and "many" in line
    line = bad_config(tmp_path, capsys, '{"schedule": "linear"}')
    assert "--schedule" in line and "linear" in line
    assert "compile must be true or false" in bad_config(tmp_path, capsys, '{"compile": "yes"}')


def test_unreadable_files_are_named(tmp_path, capsys):
    assert "no such file" in bad_config(tmp_path, capsys, None, "absent.toml")
    assert "not valid TOML" in bad_config(tmp_path, capsys, "epochs = = 1", "broken.toml")
    assert "not valid JSON" in bad_config(tmp_path, capsys, "{epochs: 1}", "broken.json")
    assert "expected a table of flags" in bad_config(tmp_path, capsys, "[1, 2]", "list.json")


def test_a_run_config_with_a_value_no_flag_sets_is_refused(first_run, tmp_path, capsys):
    """lr_decay and the model's widths have no flag: a run made through the Python API with other
    values cannot be re-run from the command line, and saying so beats silently dropping them."""
    config = json.loads((first_run / "config.json").read_text())
    config["settings"]["lr_decay"] = 0.9
    config["settings"]["model"]["head_widths"] = config["model"]["head_widths"] = [32, 16]
    line = bad_config(tmp_path, capsys, json.dumps(config), "config.json")
    assert "lr_decay = 0.9" in line and "head_widths = [32, 16]" in line


def test_a_runs_config_with_another_preset_on_the_command_line_is_refused(first_run, tmp_path, capsys):
    """config.json holds every model field its preset chose (image size, widths...): a --preset
    beside it would build half of one preset and half of the other."""
    argv = ["--config", str(first_run / "config.json"), "--preset", "paper", "--out", str(tmp_path / "never")]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --preset cannot differ from the preset of --config ")
    assert "(tiny)" in err[0] and not (tmp_path / "never").exists()


def test_a_runs_config_whose_two_model_tables_differ_or_with_other_keys_is_refused(first_run, tmp_path, capsys):
    config = json.loads((first_run / "config.json").read_text())
    config["model"]["num_patches"] = 9
    assert "a 'model' other than the settings' one" in bad_config(tmp_path, capsys, json.dumps(config))
    config = json.loads((first_run / "config.json").read_text())
    config["epochs"] = 3
    assert "got epochs" in bad_config(tmp_path, capsys, json.dumps(config), "extra.json")


def test_an_array_is_a_comma_list(tmp_path):
    config = tmp_path / "levels.toml"
    config.write_text('[model]\nbackbone = "module:backbone_standins:resnet18_standin"\n'
                      'backbone-levels = ["layer2", "layer4"]\n')
    args, _ = train_cli.parse_train_args(train_cli.build_parser(), ["--config", str(config)])
    assert args.backbone_levels == "layer2,layer4" and args.backbone == "module:backbone_standins:resnet18_standin"
