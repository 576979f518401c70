"""The stand-in Triton driver: Triton compiles for a named GPU with no GPU present.

Installed with `triton.runtime.driver.set_active(make_driver(spec))`, it reports the target
(`GPUTarget("cuda", <capability>, 32)`), device 0, stream 0 and the target's device properties
(SM count, max shared memory per CTA). `load_binary` loads nothing; it reads the cubin's register
count with cuobjdump so that Triton's own "too many threads for these registers" check behaves
as on the device. Its launcher launches nothing and hands each launch (grid, which binary) to
`RecordingLauncher.tracker`.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import tempfile

from .cli import UsageError
from .targets import ArchSpec


def _run_tool(argv) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def cubin_resources(cubin_path) -> dict:
    """REG/SHARED/LOCAL/STACK of the cubin's entry function, from cuobjdump --dump-resource-usage."""
    from triton import knobs

    text = _run_tool([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin_path)])
    fields = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        match = re.search(rf"\b{key}:(\d+)", text)
        if match is None:
            raise RuntimeError(f"cuobjdump printed no {key} for {cubin_path}:\n{text}")
        fields[key.lower()] = int(match.group(1))
    return fields


def max_threads_per_cta(regs: int, spec: ArchSpec) -> int:
    """What the driver reports as CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK for this register count."""
    per_warp = max(1, math.ceil(regs * 32 / spec.reg_unit)) * spec.reg_unit
    return min(1024, (spec.regs_per_sm // per_warp) * 32)


class _StandInUtils:
    def __init__(self, spec: ArchSpec):
        self.spec = spec
        self._handles = 0

    def load_binary(self, name, kernel, shared, device):
        # No driver: nothing is loaded. The register count comes from the cubin itself, so
        # Triton's threads-vs-registers check (CompiledKernel._init_handles) is the device's.
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(kernel)
            fh.flush()
            res = cubin_resources(fh.name)
        self._handles += 1
        return self._handles, self._handles, res["reg"], res["local"] // 4, max_threads_per_cta(res["reg"], self.spec)

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return {
            "max_shared_mem": self.spec.smem_per_cta,
            "max_num_regs": self.spec.regs_per_sm,
            "multiprocessor_count": self.spec.sms,
            "warpSize": 32,
            "sm_clock_rate": 0,
            "mem_clock_rate": 0,
            "mem_bus_width": 0,
        }


class RecordingLauncher:
    """Takes the place of CudaLauncher: launches nothing, records the launch."""

    tracker = None  # set by whoever installs the driver (a tracing.Tracker)

    def __init__(self, src, metadata):
        self.name = metadata.name
        self.hash = metadata.hash
        self.global_scratch_size = metadata.global_scratch_size
        self.tracker.current_kernel = self.name

    def __call__(self, grid_x, grid_y, grid_z, stream, function, kernel_metadata, launch_metadata,
                 enter_hook, exit_hook, *args):
        self.tracker.record_launch(self, (grid_x, grid_y, grid_z))


def make_driver(spec: ArchSpec):
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class _StandInDriver(DriverBase):
        def __init__(self):
            self.spec = spec
            self.utils = _StandInUtils(spec)
            self.launcher_cls = RecordingLauncher

        @classmethod
        def is_active(cls):
            return False  # never picked automatically; installed with set_active

        def map_python_to_cpp_type(self, ty):
            from triton.backends.nvidia.driver import ty_to_cpp

            return ty_to_cpp(ty)

        def get_current_target(self):
            return GPUTarget("cuda", spec.capability, 32)

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=None):
            return divmod(spec.capability, 10)

        def get_active_torch_device(self):
            import torch

            return torch.device("meta")

        def get_benchmarker(self):
            raise RuntimeError("the stand-in driver runs nothing: no benchmarker")

    return _StandInDriver()


def require_triton(arch: str) -> None:
    """Raise UsageError unless Triton can compile GPU code here: the package, its NVIDIA
    backend, and no interpreter (which compiles nothing)."""
    try:
        from triton import knobs
    except ImportError as error:
        raise UsageError(f"--arch {arch}: expected the triton package to compile with ({error})")
    if knobs.runtime.interpret:
        raise UsageError("TRITON_INTERPRET=1: expected it unset (the interpreter compiles no GPU code)")
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as error:
        raise UsageError(f"--arch {arch}: expected Triton's NVIDIA backend, which does not import ({error})")


@contextlib.contextmanager
def stand_in(spec: ArchSpec, tracker):
    """The stand-in driver active, with `tracker` (a tracing.Tracker) hooked to every compile
    and launch; Triton's knobs restored on exit. The driver itself stays active afterwards:
    compiled kernels call its unload_module when they are freed, and reset_active() would look
    for a real CUDA driver."""
    import triton
    from triton import knobs

    RecordingLauncher.tracker = tracker
    with knobs.runtime.scope(), knobs.compilation.scope(), knobs.nvidia.scope():
        # Before anything can launch: every JIT function builds its binder from the active driver.
        triton.runtime.driver.set_active(make_driver(spec))
        knobs.runtime.jit_cache_hook = tracker.before_compile
        knobs.compilation.listener = tracker.after_compile
        knobs.nvidia.dump_ptxas_log = True  # the ptxas -v log of each fresh build (not a cache-key input)
        yield
