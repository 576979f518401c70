"""bench/report.py and bench/conftest.py: benchmark numbers a user can trust (issue 20).

The report is fed pytest-benchmark JSON written here, with medians, spreads and peaks chosen so
that every expected cell is worked out by hand: noisy rows are flagged, a % of peak above 100%
is refused, and a ratio is printed only between rows of one run. The suite's own policy
(calibrated rounds, the peak as the best of the interleaved readings) is checked on its pure parts.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "bench" / "report.py"
GROUP = "training step, tiny, B=32, fp32"


def _row(backend, median, iqr, rounds=9, gflop_per_s=None, peak=None):
    info = {"backend": backend}
    if gflop_per_s is not None:
        info.update(device="cpu", gflop_per_s=gflop_per_s, matmul_peak_gflop_per_s=peak, of_peak=gflop_per_s / peak)
    return {"group": GROUP, "name": f"test_training_step[tiny-{backend}]", "params": {"backend": backend},
            "stats": {"median": median, "iqr": iqr, "rounds": rounds}, "extra_info": info}


def _run_file(path, rows, when="2026-12-06T10:00:00+00:00", node="box"):
    path.write_text(json.dumps({
        "datetime": when, "commit_info": {"id": "abcdef123"}, "benchmarks": rows,
        "machine_info": {"node": node, "cpu": {"brand_raw": "CPU X", "count": 2}, "python_version": "3.11"}}))
    return path


def _report(*paths):
    result = subprocess.run([sys.executable, str(REPORT), *map(str, paths)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _cells(text, backend, run=None):
    """The cells of `backend`'s table row (of run number `run`, where the table has a run column)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {backend} |")]
    if run is not None:
        rows = [cells for cells in rows if cells[-1] == str(run)]
    assert len(rows) == 1, text
    header = next(line for line in text.splitlines() if line.startswith("| backend |"))
    return dict(zip([cell.strip() for cell in header.strip("|").split("|")], rows[0]))


def test_noisy_rows_are_flagged_and_quiet_rows_are_not(tmp_path):
    # IQR / median: reference 0.6/2.0 = 30%, triton 0.088/0.8 = 11%, auto 0.04/0.5 = 8%, native 0.02/1.0 = 2%;
    # the reference had 3 rounds from 1.3 s to 15 s.
    path = _run_file(tmp_path / "run.json", [
        _row("reference", 2.0, 0.6), _row("triton", 0.8, 0.088), _row("auto", 0.5, 0.04), _row("native", 1.0, 0.02),
        _row("native compiled", 1.0, 0.0, rounds=3)])
    text = _report(path)
    assert _cells(text, "reference")["IQR / median"] == "30% noisy"
    assert _cells(text, "triton")["IQR / median"] == "11% noisy"
    assert _cells(text, "auto")["IQR / median"] == "8%"
    assert _cells(text, "native")["IQR / median"] == "2%"
    assert _cells(text, "native compiled")["IQR / median"] == "0%, too few rounds (3)"
    # A ratio against a noisy reference says so: 2.0 / 0.5 = 4.00.
    assert _cells(text, "auto")["vs reference"] == "4.00x (noisy)"
    assert "3 of 5 rows flagged" in text


def test_a_quiet_ratio_is_not_flagged(tmp_path):
    path = _run_file(tmp_path / "run.json", [_row("reference", 0.2, 0.01), _row("native", 0.125, 0.005)])
    text = _report(path)
    assert _cells(text, "native")["vs reference"] == "1.60x"  # 0.2 / 0.125
    assert _cells(text, "native")["IQR / median"] == "4%"
    assert "0 of 2 rows flagged" in text


def test_a_percentage_of_peak_above_100_is_refused(tmp_path):
    # Peak read at 100 GFLOP/s; the row ran at 167 GFLOP/s, another at 50.
    path = _run_file(tmp_path / "run.json", [
        _row("reference", 0.2, 0.01, gflop_per_s=50.0, peak=100.0), _row("auto", 0.06, 0.001, gflop_per_s=167.0, peak=100.0)])
    text = _report(path)
    assert _cells(text, "auto")["% of peak"] == "peak under-read"
    assert _cells(text, "reference")["% of peak"] == "50%"
    assert "167%" not in text
    assert "peak under-read: the row ran faster than the best matmul read in its run" in text


@pytest.mark.parametrize("other", [dict(when="2026-12-06T11:30:00+00:00"), dict(node="another-box")],
                         ids=["another-date", "another-machine"])
def test_ratios_across_two_runs_are_refused(tmp_path, other):
    reference = _run_file(tmp_path / "a.json", [_row("reference", 0.15, 0.003)])
    auto = _run_file(tmp_path / "b.json", [_row("auto", 0.002, 0.0001)], **other)
    text = _report(reference, auto)
    assert _cells(text, "auto", run=2)["vs reference"] == "other run"
    assert "75.00x" not in text  # 0.15 / 0.002 across the two runs
    assert ("No ratio for the rows of run 2: this group's reference was measured in run 1, and a ratio holds only "
            "between rows measured side by side in one run.") in text


def test_ratios_within_one_run_are_printed(tmp_path):
    # Each run has its own reference: 0.150 / 0.060 = 2.50 in run 1, 0.300 / 0.200 = 1.50 in run 2.
    first = _run_file(tmp_path / "a.json", [_row("reference", 0.150, 0.003), _row("auto", 0.060, 0.001)])
    second = _run_file(tmp_path / "b.json", [_row("reference", 0.300, 0.006), _row("auto", 0.200, 0.002)],
                       when="2026-12-06T12:00:00+00:00")
    text = _report(first, second)
    assert _cells(text, "auto", run=1)["vs reference"] == "2.50x"
    assert _cells(text, "auto", run=2)["vs reference"] == "1.50x"
    assert "0.75x" not in text and "5.00x" not in text  # either auto against the other run's reference
    assert "No ratio" not in text


@pytest.fixture
def bench_conftest(monkeypatch):
    """bench/conftest.py as a module of its own (tests/ has a conftest too)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_conftest", REPO / "bench" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_are_calibrated_from_the_warm_up(bench_conftest):
    assert (bench_conftest.MIN_ROUNDS, bench_conftest.TARGET_SECONDS, bench_conftest.MAX_ROUNDS) == (5, 0.5, 1000)
    assert bench_conftest.calibrated_rounds([2.6, 1.9]) == 5  # a slow call: the fewest that make a median
    assert bench_conftest.calibrated_rounds([0.09, 0.04]) == 13  # 0.5 s / 0.04 s, from the fastest warm-up call
    assert bench_conftest.calibrated_rounds([3e-4] * 700) == 1000  # 0.5 s / 0.3 ms = 1667, capped


def test_of_peak_is_against_the_best_reading_of_the_run(bench_conftest):
    # The row was accounted against the best reading so far (120); a later reading found 200.
    config = SimpleNamespace(stash=pytest.Stash())
    config.stash[bench_conftest._PEAK] = SimpleNamespace(best=200.0, readings=[120.0, 90.0, 200.0])
    output = {"benchmarks": [{"extra_info": {"gflop_per_s": 150.0, "matmul_peak_gflop_per_s": 120.0, "of_peak": 1.25}},
                             {"extra_info": {"backend": "native"}}]}
    bench_conftest.pytest_benchmark_update_json(config, [], output)
    assert output["benchmarks"][0]["extra_info"]["of_peak"] == 0.75  # 150 / 200
    assert output["benchmarks"][0]["extra_info"]["matmul_peak_gflop_per_s"] == 200.0
    assert output["benchmarks"][1]["extra_info"] == {"backend": "native"}
    assert output["matmul_peak"] == {"gflop_per_s": 200.0, "readings": [120.0, 90.0, 200.0]}
