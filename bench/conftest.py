"""How the benchmark suites time: warm-up, calibrated rounds, and the machine's matmul peak read
between benchmarks.

    pytest bench/ --benchmark-only [--bench-rounds N] [--bench-warmup N]

A benchmark times its call with the `measure` fixture instead of `benchmark.pedantic`: warm-up
calls first (at least --bench-warmup of them, and WARMUP_SECONDS of them for a fast call: caches,
thread pools, oneDNN's primitive cache, the allocator, GPU clocks), then timed rounds: enough
for TARGET_SECONDS of timed calls, and never fewer than report.MIN_ROUNDS nor more than
MAX_ROUNDS. --bench-rounds N fixes the count instead. bench/report.py flags the rows whose
rounds still spread too widely.
"""

from __future__ import annotations

import argparse
import math
import time

import pytest
import torch

from report import MIN_ROUNDS  # bench/ is on sys.path: pytest puts a conftest's folder there

WARMUP_ROUNDS = 2
WARMUP_SECONDS = 0.2
TARGET_SECONDS = 0.5
MAX_ROUNDS = 1000


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def pytest_addoption(parser):
    group = parser.getgroup("lnlatten_fast benchmarks")
    group.addoption("--bench-rounds", type=_count, default=None,
                    help=f"timed rounds per benchmark (default: enough for {TARGET_SECONDS} s of timed calls, "
                         f"{MIN_ROUNDS} to {MAX_ROUNDS})")
    group.addoption("--bench-warmup", type=_count, default=WARMUP_ROUNDS,
                    help=f"untimed warm-up calls before the rounds, at least (default {WARMUP_ROUNDS}; fast calls "
                         f"warm up for {WARMUP_SECONDS} s)")


def calibrated_rounds(warmup_seconds: list[float]) -> int:
    """Timed rounds for a call whose warm-up calls took `warmup_seconds`: its fastest call is
    the estimate, since a slow one on a busy machine says more about the machine."""
    return min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(TARGET_SECONDS / max(min(warmup_seconds), 1e-9))))


@pytest.fixture
def measure(benchmark, request):
    """`measure(target, setup=None)`: the warm-up, then `benchmark.pedantic` over the calibrated
    (or --bench-rounds) rounds, one call per round. `setup()` returns (args, kwargs) for the next
    call, untimed."""
    fixed_rounds = request.config.getoption("--bench-rounds")
    least_warmup = request.config.getoption("--bench-warmup")

    def timed_call(target, setup):
        args, kwargs = setup() if setup is not None else ((), {})
        start = time.perf_counter()
        target(*args, **kwargs)
        return time.perf_counter() - start

    def run(target, setup=None):
        warmup = []
        while len(warmup) < least_warmup or (sum(warmup) < WARMUP_SECONDS and len(warmup) < MAX_ROUNDS):
            warmup.append(timed_call(target, setup))
        rounds = fixed_rounds or calibrated_rounds(warmup)
        benchmark.extra_info["warmup_rounds"] = len(warmup)
        return benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)

    return run


# ---- the machine's matmul peak, read between benchmarks ------------------------------------------
_PEAK = pytest.StashKey["MatmulPeak"]()


class MatmulPeak:
    """GFLOP/s of large square matmuls (fp32 on CPU, bf16 on CUDA): the 100% of `of_peak`.

    The best of readings taken at the session's start and again after every benchmark that
    reports a fraction of it. On a shared machine one reading, taken while something else ran,
    under-reads the peak, and the rows measured in a later quiet spell then exceed 100%. Two
    sizes, since on a 2-core CPU one size alone can fall well short of the other."""

    def __init__(self, device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        dtype = torch.bfloat16 if cuda else torch.float32
        # Kept for the session: a reading then costs one matmul per size (on CUDA ~0.5 GB of memory).
        self.operands = [tuple(torch.rand(n, n, device=device, dtype=dtype) for _ in range(3))
                         for n in ((4096, 8192) if cuda else (2048, 3072))]
        self.readings: list[float] = []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def read(self, repeats: int = 1) -> float:
        """One more reading per size (`repeats` matmuls each); the best so far."""
        for a, b, out in self.operands:
            for _ in range(repeats):
                self._sync()
                start = time.perf_counter()
                torch.mm(a, b, out=out)
                self._sync()
                self.readings.append(2 * a.shape[0] ** 3 / (time.perf_counter() - start) / 1e9)
        return self.best

    @property
    def best(self) -> float:
        return max(self.readings)


@pytest.fixture(scope="session")
def matmul_peak(request):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = MatmulPeak(device)
    for a, b, out in peak.operands:  # warm-up: thread pool, caches, clocks
        torch.mm(a, b, out=out)
    peak.read(repeats=3)
    request.config.stash[_PEAK] = peak
    yield peak
    peak.operands.clear()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Every row's `of_peak` against the best reading of the whole run (a row measured early saw
    only the readings before it)."""
    peak = config.stash.get(_PEAK, None)
    if peak is None:
        return
    output_json["matmul_peak"] = {"gflop_per_s": peak.best, "readings": peak.readings}
    for bench in output_json["benchmarks"]:
        info = bench.get("extra_info", {})
        if "matmul_peak_gflop_per_s" in info:
            info["matmul_peak_gflop_per_s"] = peak.best
            info["of_peak"] = info["gflop_per_s"] / peak.best
