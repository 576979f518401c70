"""`python -m lnlatten_fast.info`: versions, the native build, and which backends run here."""

from __future__ import annotations

import platform

import torch

from . import __version__
from .ops import native
from .ops.dispatch import backends, measured_choices


def report() -> str:
    lines = [
        f"lnlatten_fast {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
    ]
    lines.extend(native.build_report())
    lines.append("")
    lines.append("backend   dev  ok   why")
    for statuses in backends().values():
        lines.extend(str(status) for status in statuses.values())
    choices = measured_choices()
    if choices:
        lines.append("")
        lines.append("auto's measured conv choices (this process):")
        lines.extend(f"  {key[0]} {key[1:]} -> {name}" for key, name in choices.items())
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
