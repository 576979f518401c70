"""Looking at one training step for a named GPU without one (bench/compile_report.py,
bench/profile_step.py), by concept:

- targets.py: the archs' limits, their GPUs' datasheet peaks, the fixed efficiency tables;
- cli.py: the scripts' one-line usage errors (exit 2);
- driver.py: the stand-in Triton driver (compiles for the target, launches nothing, records);
- tracing.py: one step on meta tensors, the Triton custom ops' real host wrappers called
  through a dispatch mode; the Tracker of ops, launches and compiles;
- ptx.py: per-binary analysis (PTX features, ptxas log, occupancy);
- estimate.py: the roofline estimates (the compile report's per conv launch, the profiler's per op);
- render.py: the compile report's markdown;
- counting.py, autocast.py, profile.py, inductor.py, protocol.py, profile_render.py: the
  whole-step profiler (launches, FLOPs, bytes, host syncs per op; the compiled step's kernels;
  the protocol's wall clock).

Each module imports torch, triton and lnlatten_fast only inside functions, so the tests can
import the pure helpers under any environment.
"""
