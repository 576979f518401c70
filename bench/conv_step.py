#!/usr/bin/env python
"""One SimpleNet-ensemble forward + backward on a backend, for profilers (ncu, nsys).

    python bench/conv_step.py [--backend triton] [--preset paper] [--batch 64] [--repeat 2]

bf16 on CUDA, channels-last F9, as the trainer runs it. The first repeat compiles the
kernels; profile the last (e.g. ncu --launch-skip). Prints the mean time of the repeats after
the first (with CUDA events), which is a measurement of this machine, not an estimate.
"""

from __future__ import annotations

import argparse
import sys

import torch

import lnlatten_fast as lf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/conv_step.py: expected a CUDA device (it profiles GPU kernels)", file=sys.stderr)
        return 2
    cfg = lf.LNLConfig.preset(args.preset, backend=args.backend)
    model = lf.LNLAttenNet(cfg).cuda().to(torch.bfloat16)
    ensemble = model.head.patches
    f9 = torch.randn(args.batch, cfg.unet_widths[0], cfg.image_size, cfg.image_size, device="cuda",
                     dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(max(1, args.repeat)):
        start.record()
        out = ensemble(f9)
        out.float().square().mean().backward()
        end.record()
        torch.cuda.synchronize()
        if i:
            times.append(start.elapsed_time(end))
    if times:
        print(f"{args.backend} SimpleNet forward+backward, B={args.batch}, bf16: {sum(times) / len(times):.2f} ms "
              f"(mean of {len(times)}, measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
