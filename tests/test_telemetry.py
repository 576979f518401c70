"""GPU telemetry (training/telemetry.py) and the benchmark report (bench/report.py), without a GPU:
NVML is replaced by a fake that returns known readings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from lnlatten_fast.training import telemetry

REPO = Path(__file__).resolve().parents[1]


def test_off_on_cpu_and_silent(capsys):
    with telemetry.GpuMonitor("cpu") as monitor:
        pass
    assert not monitor.active and monitor.summary() == {}
    assert capsys.readouterr().err == ""


def test_without_nvml_it_says_so_once_and_carries_on(monkeypatch, capsys):
    broken = types.ModuleType("pynvml")

    def fail():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monkeypatch.setattr(telemetry, "_WARNED", set())
    first, second = telemetry.GpuMonitor("cuda:0"), telemetry.GpuMonitor("cuda:0")
    assert not first.active and not second.active and second.summary() == {}
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: GPU telemetry off: NVML is not available (libnvidia-ml.so.1: cannot open shared object file)"]


def _fake_nvml(readings):
    nvml = types.ModuleType("pynvml")
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    nvml.nvmlSystemGetDriverVersion = lambda: "570.1"
    state = {"i": 0}

    def reading():
        value = readings[min(state["i"], len(readings) - 1)]
        state["i"] += 1
        return value

    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=reading()["util"])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=readings[min(state["i"], len(readings)) - 1]["mem"])
    nvml.nvmlDeviceGetPowerUsage = lambda h: 300_000
    nvml.nvmlDeviceGetTemperature = lambda h, kind: 60
    return nvml


def test_samples_in_a_thread_and_summarises(monkeypatch):
    readings = [{"util": 50, "mem": 2**30}, {"util": 100, "mem": 3 * 2**30}]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(readings))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    with telemetry.GpuMonitor("cuda", interval=0.01) as monitor:
        time.sleep(0.1)  # the sampler thread adds readings meanwhile
        summary = monitor.summary(reset=True)
    assert monitor.active
    assert summary["gpu"] == "NVIDIA H200" and summary["driver"] == "570.1"
    assert summary["samples"] >= 3 and summary["utilisation_peak"] == 100
    assert 50 <= summary["utilisation_mean"] <= 100
    assert summary["memory_used_peak_bytes"] == 3 * 2**30
    assert summary["power_mean_watts"] == 300.0 and summary["temperature_peak_c"] == 60
    assert summary["torch_max_memory_allocated_bytes"] == 123


def test_report_tables_from_benchmark_json(tmp_path):
    def bench(group, backend, median):
        return {"group": group, "name": f"test[{backend}]", "params": {"backend": backend}, "stats": {"median": median},
                "extra_info": {"backend": backend, "images_per_s": 32 / median, "gflop_per_s": 10 / median,
                               "of_peak": 0.1 / median, "matmul_peak_gflop_per_s": 100.0, "device": "cpu"}}

    data = {"datetime": "2026-11-30T10:00:00", "machine_info": {"node": "box", "cpu": {"brand_raw": "CPU X", "count": 2},
                                                                 "python_version": "3.11"},
            "commit_info": {"id": "abcdef123"},
            "benchmarks": [bench("step", "reference", 2.0), bench("step", "native", 1.0)]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    result = subprocess.run([sys.executable, str(REPO / "bench" / "report.py"), str(path), "--out", str(tmp_path / "t.md")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "t.md").read_text()
    assert "CPU X, 2 CPUs" in table and "Matmul peak measured in the same run on cpu: 100 GFLOP/s" in table
    assert "| native | 1000.0 | 32.0 | 10 | 10% | 2.00x |" in table
    assert "| reference | 2000.0 | 16.0 | 5 | 5% | 1.00x |" in table
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "report.py"), str(tmp_path / "none.json")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {tmp_path / 'none.json'}: expected pytest-benchmark JSON")
