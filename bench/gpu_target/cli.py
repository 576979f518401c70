"""Command-line plumbing shared by the bench scripts: bad input is one line,
`error: --flag VALUE: expected ...`, and exit status 2 (no argparse usage dump)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class UsageError(Exception):
    """Bad input: printed as `error: <message>`, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError naming the flag and what it expects."""

    def __init__(self, *args, flags: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.known_flags = flags

    def error(self, message):
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            raise UsageError(f"{match.group(1)}: expected only {', '.join(self.known_flags)}")
        match = re.match(r"argument (\S+): (.*)", message)
        if match:
            raise UsageError(f"{match.group(1).split('/')[0]}: expected a value ({match.group(2)})")
        raise UsageError(message)


def positive_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or str(value) != text.strip():
        raise UsageError(f"{flag} {text}: expected a positive integer")
    return value


def use_checkout() -> None:
    """Import the checkout's lnlatten_fast, not an installed copy: the repository root first."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def command(parse_args, run):
    """main(argv) for a command: parse, run, and turn a UsageError into one `error:` line and
    exit status 2."""

    def main(argv=None) -> int:
        try:
            return run(parse_args(sys.argv[1:] if argv is None else argv))
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return main


def run_main(main) -> None:
    """Exit with main()'s status, skipping interpreter teardown: after failed compiles it once
    segfaulted there (exit 139, a teardown-order crash in compiler objects the failures left
    behind), which would hide the status. Everything is written and flushed first."""
    import os

    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
