"""The library's error for a bad parameter value, and how the command lines show it.

Library code names the parameter it was given (`data_root`, `epochs`); only the command-line
entry points speak in flags, and `as_flag` is the one place that translates.
"""

from __future__ import annotations

__all__ = ["ParameterError", "as_flag", "cli_message"]


class ParameterError(ValueError):
    """`parameter` has a bad value: `problem` says what was expected.

    str(error) reads "<parameter> <problem>", e.g. "data_root is required for dataset 'rafdb'".
    """

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter = parameter
        self.problem = problem


def as_flag(parameter: str) -> str:
    """The command-line flag of a parameter: data_root -> --data-root."""
    return "--" + parameter.replace("_", "-")


def cli_message(error: Exception) -> str:
    """The one `error:` line a command line prints for `error`, naming flags, not parameters."""
    if isinstance(error, ParameterError):
        return f"error: {as_flag(error.parameter)} {error.problem}"
    return f"error: {error}"
