"""`python -m lnlatten_fast.info`: versions, the native build, and which backends run here."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__, backends
from .ops import native
from .ops.dispatch import measured_choices


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="python -m lnlatten_fast.info", description=__doc__.split("\n\n")[0])


def report() -> str:
    lines = [
        f"lnlatten_fast {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
    ]
    lines.extend(native.build_report())
    lines.append("")
    lines.append(repr(backends()))
    choices = measured_choices()
    if choices:
        lines.append("")
        lines.append("auto's measured conv choices (this process):")
        lines.extend(f"  {key[0]} {key[1:]} -> {name}" for key, name in choices.items())
    return "\n".join(lines)


def main(argv=None) -> int:
    build_parser().parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
