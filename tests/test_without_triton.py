"""A CPU install without the `[triton]` extra: the package, its CLIs and training work, the
`triton` backend says it is not installed and how to install it, and `auto` passes it over.

Each check runs in a fresh interpreter where `import triton` fails as it does when the
package is absent (`sys.modules["triton"] = None`, set before torch or lnlatten_fast load).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lnlatten_fast

NOT_INSTALLED = "not installed (pip install 'lnlatten_fast[triton]')"
WITHOUT_TRITON = "import sys; sys.modules['triton'] = None\n"

# Everything one interpreter without triton can tell, as JSON on stdout's last line.
PROBE = WITHOUT_TRITON + r'''
import contextlib, importlib, io, json, runpy, sys
import torch
import lnlatten_fast as lf
from lnlatten_fast.ops import dispatch
from lnlatten_fast.training.step import TrainStep, build_optimizer

cli_modules = json.loads(sys.argv[1])
for name in cli_modules:
    importlib.import_module(name)

info = io.StringIO()
sys.argv = ["lnlatten_fast.info"]
try:
    with contextlib.redirect_stdout(info):
        runpy.run_module("lnlatten_fast.info", run_name="__main__")
except SystemExit as exit_status:
    assert exit_status.code in (0, None), exit_status.code

config = lf.LNLConfig.tiny(image_size=32)
x = torch.randn(2, 3, 32, 32)
try:
    lf.LNLAttenNet(config.replace(backend="triton"))(x)
    explicit_error = None
except Exception as error:
    explicit_error = f"{type(error).__name__}: {error}"

torch.manual_seed(0)
model = lf.LNLAttenNet(config).channels_last()
before = [p.detach().clone() for p in model.parameters()]
step = TrainStep(model, build_optimizer(model, 1e-3, 2e-4), precision="fp32", device="cpu")
loss = float(step(x.contiguous(memory_format=torch.channels_last), torch.tensor([0, 1])))
moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

print(json.dumps({
    "info": info.getvalue(),
    "availability": {dev: list(dispatch.availability("triton", dev)) for dev in ("cpu", "cuda")},
    "auto_on_cpu": dispatch.resolve_name("auto", torch.device("cpu")),
    "explicit_error": explicit_error,
    "loss": loss,
    "weights_moved": moved,
    "triton_stayed_absent": sys.modules.get("triton", "missing") is None,
}))
'''


def _cli_modules() -> list[str]:
    """Every command line of the package: its modules with a `main`."""
    package = Path(lnlatten_fast.__file__).parent
    return sorted(
        f"lnlatten_fast.{path.stem}" for path in package.glob("*.py") if "\ndef main(" in path.read_text()
    )


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def probe() -> dict:
    result = _run(PROBE, json.dumps(_cli_modules()))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_package_and_every_cli_import_without_triton(probe):
    assert len(_cli_modules()) >= 6  # train, evaluate, predict, analyze, sweep, info at least
    assert probe["triton_stayed_absent"]


def test_the_backends_table_says_triton_is_not_installed_on_every_device(probe):
    assert probe["availability"] == {"cpu": [False, NOT_INSTALLED], "cuda": [False, NOT_INSTALLED]}
    triton_rows = [line for line in probe["info"].splitlines() if line.startswith("triton")]
    assert len(triton_rows) == 2, probe["info"]
    assert all(NOT_INSTALLED in row for row in triton_rows), triton_rows


def test_auto_passes_triton_over(probe):
    assert probe["auto_on_cpu"] in ("native", "reference")
    auto_rows = [line for line in probe["info"].splitlines() if line.startswith("auto")]
    assert any(" yes " in row for row in auto_rows), probe["info"]


def test_asking_for_triton_names_the_backend_and_the_extra(probe):
    assert probe["explicit_error"] == f"RuntimeError: backend 'triton' cannot run on cpu: {NOT_INSTALLED}"


def test_a_training_step_on_auto_runs_without_triton(probe):
    assert probe["loss"] == probe["loss"] and 0 < probe["loss"] < 100  # finite, a cross-entropy
    assert probe["weights_moved"]


def test_the_train_cli_refuses_backend_triton_in_one_line(tmp_path):
    out = tmp_path / "run"
    code = WITHOUT_TRITON + (
        "import runpy\n"
        f"sys.argv = ['lnlatten_fast.train', '--backend', 'triton', '--epochs', '1', '--out', {str(out)!r}]\n"
        "runpy.run_module('lnlatten_fast.train', run_name='__main__')\n"
    )
    result = _run(code)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [f"error: --backend 'triton' cannot run on cpu: {NOT_INSTALLED}"]
    assert not out.exists()
