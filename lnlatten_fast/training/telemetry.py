"""GPU telemetry through NVML (`nvidia-ml-py`), sampled in a background thread.

    monitor = GpuMonitor(device)            # a no-op off CUDA, or without NVML (it says so once)
    with monitor:                            # samples every `interval` seconds while open
        ...
        monitor.summary(reset=True)          # {"gpu": name, "driver": ..., "utilisation_mean": ...}

A summary holds the GPU's name and driver, utilisation (mean and peak, %), memory in use
(peak, bytes, as NVML sees the whole device), power (mean, W) and temperature (peak, °C) over
the samples since the last reset, plus torch's own `max_memory_allocated` of this process.
Where there is no GPU or no NVML, `summary()` returns {} and nothing is sampled.
"""

from __future__ import annotations

import sys
import threading

import torch

__all__ = ["GpuMonitor"]

_WARNED: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"note: {message}", file=sys.stderr)


class GpuMonitor:
    """Samples NVML for `device` every `interval` seconds in a daemon thread while entered."""

    def __init__(self, device: torch.device | str, interval: float = 0.5):
        self.device = torch.device(device)
        self.interval = interval
        self._nvml = None
        self._handle = None
        self._samples: list[tuple[float, float, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.static: dict = {}
        if self.device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
            name = pynvml.nvmlDeviceGetName(self._handle)
            driver = pynvml.nvmlSystemGetDriverVersion()
            self.static = {
                "gpu": name.decode() if isinstance(name, bytes) else name,
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
            }
        except Exception as error:  # noqa: BLE001 - no NVML library, no permission, no device: carry on
            _say_once(f"GPU telemetry off: NVML is not available ({error})")
            self._nvml = None

    @property
    def active(self) -> bool:
        return self._nvml is not None

    def sample(self) -> None:
        """One reading (utilisation %, memory used bytes, power W, temperature °C)."""
        nvml, handle = self._nvml, self._handle
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).used
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        except Exception as error:  # noqa: BLE001 - a query this GPU does not support
            _say_once(f"GPU telemetry: a query failed ({error}); stopping the sampler")
            self._stop.set()
            return
        with self._lock:
            self._samples.append((float(util), float(memory), float(power), float(temperature)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "GpuMonitor":
        if self.active:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._stop.clear()
            self.sample()
            self._thread = threading.Thread(target=self._run, name="lnlatten-gpu-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval)
            self._thread = None

    def summary(self, reset: bool = False) -> dict:
        """Statistics of the samples since the last reset ({} without a GPU or NVML)."""
        if not self.active:
            return {}
        self.sample()
        with self._lock:
            samples, self._samples = (self._samples, []) if reset else (list(self._samples), self._samples)
        util, memory, power, temperature = zip(*samples)
        out = {
            **self.static,
            "samples": len(samples),
            "utilisation_mean": sum(util) / len(util),
            "utilisation_peak": max(util),
            "memory_used_peak_bytes": int(max(memory)),
            "power_mean_watts": sum(power) / len(power),
            "temperature_peak_c": max(temperature),
            "torch_max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated(self.device)),
        }
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)
        return out
