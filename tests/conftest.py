import dataclasses
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Triton's interpreter stands in for a GPU only where there is none: with a CUDA device the
# tests run the compiled kernels (the interpreter would copy CUDA tensors to the host, and its
# bf16 tl.dot is wrong). Triton reads the variable when kernels are decorated, so it is set
# before anything imports lnlatten_fast.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI draws the same examples every run (a red build is reproducible); "thorough" explores.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# fp32 bounds are IEEE fp32's: cuDNN and the triton convolutions follow these flags, and
# torch's default for convolutions is TF32 (tests that want TF32 turn it on themselves).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="module")
def interpreter_without_overflow_checks():
    """The interpreter checks every int32 add/mul for overflow by default, which more than
    doubles its run time; no index of these tiny shapes can come near 2**31."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    try:
        from triton.runtime import interpreter
    except ImportError:
        yield
        return

    builder = interpreter.interpreter_builder
    saved = builder.options
    if hasattr(saved, "sanitize_overflow"):
        builder.options = dataclasses.replace(saved, sanitize_overflow=False)
    yield
    builder.options = saved
