"""`python -m lnlatten_fast.analyze RUN_DIR`: the paper's analysis figures of a finished run.

Lists the run's own confusion matrix with class names, RUN_DIR/confusion_matrix.png (figs. 8-9;
drawn there from the last finished epoch when the run has none), and writes RUN_DIR/figures/:
probe faces with their w_g (fig. 10), w_g while training as snapshots and per-region curves (figs. 11-12), w_l
with each patch occluded in turn (fig. 13), and, given runs trained with other α
(`--alpha-runs`), w_g's spread across α (fig. 14).
"""

from __future__ import annotations

import argparse
import sys

from . import cli
from .training.analysis import analyze_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnlatten_fast.analyze", description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("run_dir", help="a directory written by lnlatten_fast.train (one fold's, for a K-fold run)")
    p.add_argument("--alpha-runs", nargs="+", default=[], metavar="RUN_DIR",
                   help="runs of the same setting with other α: adds fig. 14 (e.g. a sweep alpha's run directories)")
    p.add_argument("--which", "--checkpoint", dest="which", choices=("last", "best"), default="last",
                   help="which of the run's models to draw: its last epoch's (last.pt) or its best (best.pt); "
                        "--checkpoint is its older name")
    cli.add_device_flag(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = analyze_run(args.run_dir, args.alpha_runs, args.device, args.which)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error, {"run_dir": "RUN_DIR"})
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
