"""The GPUs a report can target: each arch's SM limits, its GPU's datasheet peaks, and the
fixed efficiency tables the estimates use (one table for the compile report and the step
profiler). Standard library only, so tests import it under any environment."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    capability: int
    gpu: str  # the GPU whose SM count and limits are used
    sms: int
    smem_per_sm: int  # bytes
    smem_per_cta: int  # bytes, opt-in maximum (what Triton checks a kernel against)
    max_warps_per_sm: int
    max_ctas_per_sm: int
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of this many
    smem_reserved_per_cta: int = 1024
    smem_granule: int = 128


_KIB = 1024
_HOPPER = ArchSpec(90, "H100/H200-class", 132, 228 * _KIB, 227 * _KIB, 64, 32)
_BLACKWELL = ArchSpec(100, "B200-class", 148, 228 * _KIB, 227 * _KIB, 64, 32)
ARCHS = {
    "sm_80": ArchSpec(80, "A100-class", 108, 164 * _KIB, 163 * _KIB, 64, 32),
    "sm_86": ArchSpec(86, "A40-class", 84, 100 * _KIB, 99 * _KIB, 48, 16),
    "sm_89": ArchSpec(89, "L40S-class", 142, 100 * _KIB, 99 * _KIB, 48, 24),
    "sm_90": _HOPPER,
    "sm_90a": _HOPPER,
    "sm_100": _BLACKWELL,
    "sm_100a": _BLACKWELL,
}


@dataclasses.dataclass(frozen=True)
class Peaks:
    gpu: str
    tensor_16bit: float  # dense bf16/fp16 FLOP/s
    tensor_tf32: float
    fma_fp32: float
    hbm: float  # bytes/s
    pcie: float = 64e9  # host link, bytes/s per direction (PCIe Gen5 x16)


PEAKS = {  # datasheet figures, dense (no sparsity)
    90: Peaks("H200 SXM", 989.4e12, 494.7e12, 66.9e12, 4.8e12),
    80: Peaks("A100 SXM", 312e12, 156e12, 19.5e12, 2.04e12, 32e9),
    100: Peaks("B200", 2250e12, 1100e12, 80e12, 8.0e12),
}

# The compile report's per-binary MMA efficiency: the fraction of dense peak a kernel of that
# MMA class reaches when every slot is busy (ASSUMED, to be checked on the GPU): wgmma 0.70
# (Triton's cp.async-pipelined Hopper GEMMs), mma.sync 0.35 (no wgmma: about half of it on
# Hopper), FMA 0.50 of the CUDA-core fp32 peak.
EFFICIENCY = {"wgmma": 0.70, "tcgen05": 0.70, "mma.sync": 0.35, "FMA": 0.50}
SCALAR_16BIT_LOADS = 16  # "a handful": more static 16-bit ld.global than this flags a kernel


# The step profiler's fixed table (issue 18): GEMM and conv FLOPs at 0.70 of dense peak (the
# compile report's wgmma figure above), memory-bound ops at 0.80 of HBM bandwidth, and 4 us per
# launch outside a CUDA graph. Stated, not fitted: the H200 run of 2026-12-04 measured the conv
# kernels 5-10x slower than this table predicts (bench/results/2026-12-04-h200/README.md).
# Beyond the table, ASSUMED for what it does not cover: host <-> device copies at 0.80 of
# the host link's peak (pinned memory), and synchronous checkpoint writes to a local disk at 2 GB/s.
@dataclasses.dataclass(frozen=True)
class StepTable:
    gemm_efficiency: float = EFFICIENCY["wgmma"]
    hbm_efficiency: float = 0.80
    launch_seconds: float = 4e-6
    pcie_efficiency: float = 0.80
    disk_bytes_per_second: float = 2e9


STEP_TABLE = StepTable()


def peak_flops(peaks: Peaks, dtype: str, tf32: bool = True) -> float:
    """Dense tensor-core peak for GEMM/conv operands of `dtype` ("bf16", "fp16", "fp32"):
    16-bit, TF32 when `tf32` (torch's default for convolutions), else CUDA-core fp32."""
    if dtype in ("bf16", "fp16"):
        return peaks.tensor_16bit
    return peaks.tensor_tf32 if tf32 else peaks.fma_fp32
