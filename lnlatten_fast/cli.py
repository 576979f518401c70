"""What the command lines share: the model flags, derived from LNLConfig's fields, and how a
library error becomes one `error:` line and exit status 2.

A field of LNLConfig with flag help in its metadata (`config.flag_help`) is a flag
`--field-name`; its type comes from the field's annotation (`int | None` also takes "none"),
its choices from the metadata. Numeric flags also take "auto": the preset's value. Nothing is
forwarded by hand: `model_overrides(args)` is the fields the user gave.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Callable, Iterable

from .config import PRESETS, LNLConfig, flag_help
from .errors import as_flag, cli_message
from .training.inference import RUN_CHECKPOINTS

__all__ = [
    "MODEL_FLAGS", "LIBRARY_ERRORS", "RUN_FAILED", "given_flags", "HelpFormatter", "add_model_flags", "add_device_flag",
    "add_checkpoint_flags", "refuse_which_with_a_file", "model_overrides", "fail", "preset_defaults",
]

_HINTS = typing.get_type_hints(LNLConfig)
#: The LNLConfig fields the command lines expose, in declaration order.
MODEL_FLAGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LNLConfig) if flag_help(f))
#: What library code raises for a bad value, missing file or existing run, or a file it could
#: not write (full disk, read-only folder): shown as one line.
LIBRARY_ERRORS = (ValueError, OSError)
#: Exit status of a run that stopped on its own failure (divergence), not a user mistake (2).
RUN_FAILED = 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _nullable(name: str) -> bool:
    return type(None) in typing.get_args(_HINTS[name])


def _value_type(name: str) -> type:
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    return args[0] if args else _HINTS[name]


def _parser(name: str) -> Callable[[str], object]:
    """text -> value of field `name`; "none"/"auto" -> None for numbers (see model_overrides)."""
    base = _value_type(name)

    def parse(text: str):
        if base in (int, float) and text.strip().lower() in ("none", "auto"):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse says "invalid int value: 'x'"
    return parse


def preset_defaults(name: str) -> str:
    """A field's default under each preset: "0.7", or "tiny 64, paper 144" where they differ."""
    values = {preset: getattr(PRESETS[preset].config(), name) for preset in PRESETS}
    shown = {preset: "none" if v is None else str(v) for preset, v in values.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return ", ".join(f"{preset} {v}" for preset, v in shown.items())


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str] = MODEL_FLAGS,
    default: Callable[[str], str] = preset_defaults,
) -> None:
    """Add `--field-name` for each LNLConfig field in `names`; `default(name)` says, in the help,
    what an absent flag means. An absent flag leaves no attribute on the parsed namespace."""
    fields = {f.name: f for f in dataclasses.fields(LNLConfig)}
    for name in names:
        f = fields[name]
        choices = f.metadata.get("choices")
        help_text = f"{flag_help(f)} (default: {default(name)})"
        if _value_type(name) is bool:
            parser.add_argument(as_flag(name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        parser.add_argument(as_flag(name), type=str if choices else _parser(name), choices=choices,
                            default=argparse.SUPPRESS, help=help_text)


def add_device_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = "auto") -> None:
    """`--device`, as every command line takes it (`distributed.pick_device` reads it)."""
    parser.add_argument("--device", default=default,
                        help=f"auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N (default: {default})")


def add_checkpoint_flags(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """The model a command line loads: `--checkpoint RUN_OR_CKPT` (`positional`: a bare
    RUN_OR_CKPT argument) and `--which`, as every command that reads a trained run takes them."""
    what = ("a run directory written by lnlatten_fast.train (its best.pt, or --which), or a best.pt or "
            "last.pt")
    if positional:
        parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help=what)
    else:
        parser.add_argument("--checkpoint", required=True, metavar="RUN_OR_CKPT", help=what)
    parser.add_argument("--which", choices=tuple(RUN_CHECKPOINTS), default=None,
                        help="which of the run directory's models: its best epoch's (best.pt, the default) or its "
                             "last (last.pt)")


def refuse_which_with_a_file(args: argparse.Namespace, checkpoint_flag: str = "--checkpoint ") -> int | None:
    """Exit status 2 after one `error:` line when `--which` was given with a checkpoint file, where
    it would be silently ignored; None otherwise. `checkpoint_flag` prefixes the path ("" for a
    positional RUN_OR_CKPT)."""
    if args.which is None or not Path(args.checkpoint).is_file():
        return None
    print(f"error: --which {args.which}: {checkpoint_flag}{args.checkpoint} is a checkpoint file, not a run directory",
          file=sys.stderr)
    return 2


def model_overrides(args: argparse.Namespace, names: Iterable[str] = MODEL_FLAGS) -> dict:
    """The LNLConfig fields the user set. None ("auto") for a field that cannot be None means the
    preset's value, so it is left out; for one that can (overlap), None is the value."""
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return {name: v for name, v in given.items() if v is not None or _nullable(name)}


def given_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags `argv` sets explicitly (abbreviations included): parsed
    once more with every default replaced by a marker."""
    marker = object()
    saved = {action.dest: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = marker
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action in parser._actions:
            action.default = saved[action.dest]
    return {name for name, value in vars(namespace).items() if value is not marker}


def fail(error: Exception, positionals: dict[str, str] | None = None) -> int:
    """Print the library error as the command line's one `error:` line; exit status 2.
    `positionals` names the positional arguments (parameter -> "RUN_DIR")."""
    print(cli_message(error, positionals), file=sys.stderr)
    return 2
