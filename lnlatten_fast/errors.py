"""The library's errors for bad parameter values, and how the command lines show them.

Library code names the parameter it was given (`data_root`, `epochs`); only the command-line
entry points speak in flags, and `cli_message` is the one place that translates. A problem
that points at another parameter writes its name in backticks ("pass `resume` to continue
it"), so the command line can show that one as a flag too.
"""

from __future__ import annotations

import re

__all__ = ["ParameterError", "MissingPathError", "PathExistsError", "TrainingDivergedError", "as_flag", "cli_message"]


class ParameterError(ValueError):
    """`parameter` has a bad value: `problem` says what was expected.

    str(error) reads "<parameter> <problem>", e.g. "data_root is required for dataset 'rafdb'".
    """

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter = parameter
        self.problem = problem


class MissingPathError(ParameterError, FileNotFoundError):
    """`parameter` names a file or folder that does not exist (also a FileNotFoundError)."""


class PathExistsError(ParameterError, FileExistsError):
    """`parameter` names a file or folder that must not exist yet (also a FileExistsError)."""


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became non-finite: the run stopped, nothing non-finite was saved.
    str(error) names the epoch, step, loss and lr, and the last good checkpoint."""


def as_flag(parameter: str) -> str:
    """The command-line flag of a parameter: data_root -> --data-root."""
    return "--" + parameter.replace("_", "-")


_QUOTED_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def cli_message(error: Exception, positionals: dict[str, str] | None = None) -> str:
    """The one `error:` line a command line prints for `error`, naming flags, not parameters
    (or the positional argument's name, e.g. {"run_dir": "RUN_DIR"}, for those in `positionals`)."""
    if isinstance(error, ParameterError):
        names = positionals or {}
        problem = _QUOTED_PARAMETER.sub(lambda m: names.get(m.group(1), as_flag(m.group(1))), error.problem)
        return f"error: {names.get(error.parameter, as_flag(error.parameter))} {problem}"
    return f"error: {error}"
