"""The command lines agree with each other (issue 20, deliverable 5): every flag has help and no
help cites the SPEC, every CLI refuses an unknown flag, `evaluate` takes a run directory and
`--which` as `analyze` does and reports each class, `sweep` refuses a bad data root before any
run starts and says what its numbers are (one seed: no std; E < 10 epochs: the last E), and
`lf.backends()` shows itself as the table `info` prints.

Each test names the inconsistency it found; each was seen to fail before its fix.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil

import pytest

from test_validation_upfront import error_lines, save_checkpoint

import lnlatten_fast as lf
from lnlatten_fast import evaluate as evaluate_cli
from lnlatten_fast import info as info_cli
from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast.data.labels import CLASS_NAMES
from lnlatten_fast.training import sweeps


def command_lines() -> dict[str, object]:
    """Every lnlatten_fast/<name>.py with a build_parser(), by name: the CLIs, found rather than
    listed, so a CLI added later is held to the same rules."""
    found = {}
    for module in pkgutil.iter_modules(lf.__path__):
        if module.ispkg or module.name.startswith("_"):
            continue
        imported = importlib.import_module(f"lnlatten_fast.{module.name}")
        if callable(getattr(imported, "build_parser", None)):
            found[module.name] = imported
    return found


CLIS = command_lines()


def test_the_command_lines_are_found():
    assert {"train", "evaluate", "analyze", "sweep", "info"} <= set(CLIS)


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_flag_has_help_and_none_cites_the_spec(name):
    """Before: `evaluate --device/--batch-size` had no help, `train --dataset` said "layouts in
    SPEC §5", and `info` had no parser at all."""
    parser = CLIS[name].build_parser()
    for action in parser._actions:
        shown = " / ".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{name} {shown}: no help"
        assert "SPEC" not in action.help, f"{name} {shown}: {action.help}"
    assert "SPEC" not in parser.format_help()


def _required_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """A value for each positional and required flag (the first choice, else "1"), so that
    parsing gets as far as the unknown flags."""
    argv = []
    for action in parser._actions:
        if action.option_strings and not action.required:
            continue
        value = str(action.choices[0] if isinstance(action.choices, (list, tuple)) else
                    sorted(action.choices)[0] if action.choices else "1")
        argv += ([action.option_strings[0]] if action.option_strings else []) + [value]
    return argv


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_command_line_refuses_an_unknown_flag(name, capsys):
    """Before: `info --bogus` printed the report; `sweep ... --bogus` was refused by train's
    parser, in train's name, after the sweep had parsed it as its own."""
    module = CLIS[name]
    prog = module.build_parser().prog
    with pytest.raises(SystemExit) as stop:
        module.main([*_required_arguments(module.build_parser()), "--bogus"])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"{prog}: error: unrecognized arguments: --bogus"]


# ---- evaluate -------------------------------------------------------------------------------------
def test_evaluate_takes_a_run_directory_and_which(tmp_path, capsys):
    """Before: no --which; a run directory always meant its best.pt."""
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt")
    save_checkpoint(run / "last.pt")
    payload = lf.training.checkpoint.load(run / "last.pt")
    payload["epoch"] = 2
    lf.training.checkpoint.save_atomic(payload, run / "last.pt")
    for which, epoch in ((None, 1), ("best", 1), ("last", 2)):
        assert evaluate_cli.main(["--checkpoint", str(run), "--json", *(["--which", which] if which else [])]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["epoch"] == epoch
        assert result["checkpoint"] == str(run / f"{which or 'best'}.pt")


def test_evaluate_which_with_a_checkpoint_file_is_refused(tmp_path, capsys):
    """`--which last` beside a best.pt would evaluate best.pt and say nothing."""
    path = save_checkpoint(tmp_path / "run" / "best.pt")
    assert evaluate_cli.main(["--checkpoint", str(path), "--which", "last"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --which last: --checkpoint {path} is a checkpoint file, not a run directory"]


def test_evaluate_prints_and_writes_each_class_accuracy(tmp_path, capsys):
    """Before: only the overall and mean class accuracy. A model that says "Happiness" to every
    face is right on every Happiness face and on no other."""
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt", favourite=CLASS_NAMES.index("Happiness"))
    assert evaluate_cli.main(["--checkpoint", str(run), "--json"]) == 0
    per_class = json.loads(capsys.readouterr().out)["per_class"]
    assert list(per_class) == list(CLASS_NAMES)
    assert {name: entry["accuracy"] for name, entry in per_class.items()} == {
        name: 1.0 if name == "Happiness" else 0.0 for name in CLASS_NAMES}
    assert sum(entry["images"] for entry in per_class.values()) == 21  # small_settings' test split
    assert evaluate_cli.main(["--checkpoint", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if line.split() and line.split()[0] in CLASS_NAMES}
    assert rows == {name: "1.0000" if name == "Happiness" else "0.0000" for name in CLASS_NAMES}


# ---- sweep --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,root", [("folder", "missing"), ("rafdb", "empty"), ("rafdb", None)])
def test_sweep_refuses_a_bad_data_root_before_any_run_starts(tmp_path, capsys, monkeypatch, dataset, root):
    """Before: `sweep alpha` started all 11 runs, and each found the data root bad."""
    def no_run(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(sweep_cli.subprocess, "Popen", no_run)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "sweep"
    flags = ["--dataset", dataset] + (["--data-root", str(tmp_path / root)] if root else [])
    assert sweep_cli.main(["alpha", "--out", str(out), *flags]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith("error: --data-root" if root != "empty" else "error: "), errors
    assert not out.exists()


def _finished(out, sweep: str, slug: str, seed: int, accuracy: float, epochs: int, averaged: int | None) -> None:
    """A finished run's summary.json; `averaged` None: one written before it said
    `epochs_averaged`."""
    setting = next(s for s in sweeps.SWEEPS[sweep][1] if s.slug == slug)
    directory = sweeps.run_dir(out, setting, seed)
    directory.mkdir(parents=True)
    summary = {"test_accuracy_last10_mean": accuracy, "epochs": epochs}
    summary.update({} if averaged is None else {"epochs_averaged": averaged})
    (directory / "summary.json").write_text(json.dumps(summary))


def _tables(out, sweep: str, seeds: int) -> tuple[str, list[list[str]]]:
    parameters = {s.slug: 1 for s in sweeps.SWEEPS[sweep][1]}
    rows = sweeps.collect(out, sweep, list(range(seeds)), parameters)
    markdown, table = sweeps.write_tables(out, sweep, rows, "synthetic", "test")
    return markdown.read_text(), [line.split(",") for line in table.read_text().splitlines()]


def test_a_one_seed_sweep_leaves_the_std_blank(tmp_path):
    """Before: table.csv gave one seed a std of 0.0000."""
    _finished(tmp_path, "variants", "full", 0, 0.5, epochs=24, averaged=10)
    _, csv_rows = _tables(tmp_path, "variants", seeds=1)
    full = next(row for row in csv_rows if row[0] == "LNLAttenNet")
    assert full[2:5] == ["1", "50.0000", ""]


def test_a_sweep_of_short_runs_says_how_many_epochs_it_averaged(tmp_path):
    """Before: "mean of the last 10 epochs" for runs of 2 epochs."""
    _finished(tmp_path, "variants", "simple", 0, 0.5, epochs=2, averaged=2)
    _finished(tmp_path, "variants", "full", 0, 0.5, epochs=2, averaged=None)
    markdown, _ = _tables(tmp_path, "variants", seeds=1)
    title = markdown.splitlines()[0]
    assert "mean of the last 2 epochs" in title and "last 10" not in title
    _finished(tmp_path, "variants", "local", 0, 0.5, epochs=24, averaged=10)
    title = _tables(tmp_path, "variants", seeds=1)[0].splitlines()[0]
    assert "mean of the last min(10, E) epochs" in title, title


def test_a_sweep_of_long_runs_says_the_last_10_epochs(tmp_path):
    _finished(tmp_path, "variants", "full", 0, 0.5, epochs=24, averaged=None)
    title = _tables(tmp_path, "variants", seeds=1)[0].splitlines()[0]
    assert "mean of the last 10 epochs" in title


# ---- lf.backends() and info ---------------------------------------------------------------------
def test_backends_shows_itself_as_the_info_table_and_stays_a_mapping(capsys):
    """Before: `print(lf.backends())` printed a raw nested dict."""
    table = lf.backends()
    assert table["reference"]["cpu"].usable and isinstance(table, dict) and "auto" in table
    lines = repr(table).splitlines()
    assert lines[0].split() == ["backend", "dev", "ok", "why"]
    assert any(line.split()[:3] == ["reference", "cpu", "yes"] for line in lines)
    assert len(lines) == 1 + sum(len(statuses) for statuses in table.values())
    assert str(table) == repr(table)
    assert info_cli.main([]) == 0
    assert repr(table) in capsys.readouterr().out
