"""Build script for the optional native extension ``lnlatten_fast._C``.

All package metadata lives in pyproject.toml; this file only wires a CMake
(+ Ninja) build of the pybind11 module into setuptools' ``build_ext``.

Environment variables
---------------------
LNLATTEN_CUDA=auto|0|1
    auto (default): compile the CUDA kernels if CMake finds a CUDA compiler
    (if that build fails, retry CPU-only); 0: CPU-only; 1: CUDA required.
LNLATTEN_REQUIRE_NATIVE=1
    Fail the installation if the native module cannot be built. By default a
    failed native build only prints a warning and the pure-Python package
    (with its PyTorch fallback backend) is installed.
LNLATTEN_CUDA_ARCH="80;90"
    CUDA architectures for the kernels (CMake CUDA_ARCHITECTURES syntax).
LNLATTEN_CMAKE_ARGS="..."
    Extra arguments for the CMake configure step (shell-split).
CMAKE_BUILD_PARALLEL_LEVEL / MAX_JOBS
    Parallel build jobs (default: all CPUs).

No torch is needed at build time.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_SOURCES = ("CMakeLists.txt", "csrc", "kernels")


def _log(msg: str) -> None:
    print(f"[lnlatten build] {msg}", file=sys.stderr, flush=True)


def _warn_banner(lines: list[str]) -> None:
    bar = "=" * 78
    text = "\n".join([bar, *("WARNING: " + ln if i == 0 else "         " + ln
                             for i, ln in enumerate(lines)), bar])
    print(text, file=sys.stderr, flush=True)


def _cuda_mode() -> str:
    raw = os.environ.get("LNLATTEN_CUDA", "auto").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in ("1", "on", "true", "yes"):
        return "1"
    if raw in ("0", "off", "false", "no"):
        return "0"
    raise ValueError(f"LNLATTEN_CUDA must be 'auto', '0' or '1' (got {raw!r})")


def _require_native() -> bool:
    return os.environ.get("LNLATTEN_REQUIRE_NATIVE", "").strip() == "1"


def _find_cmake() -> str | None:
    # Prefer the `cmake` PyPI package (a build requirement), then PATH.
    try:
        import cmake  # type: ignore

        exe = Path(cmake.CMAKE_BIN_DIR) / ("cmake.exe" if os.name == "nt" else "cmake")
        if exe.is_file():
            return str(exe)
    except Exception:
        pass
    return shutil.which("cmake")


def _find_ninja() -> str | None:
    try:
        import ninja  # type: ignore

        exe = Path(ninja.BIN_DIR) / ("ninja.exe" if os.name == "nt" else "ninja")
        if exe.is_file():
            return str(exe)
    except Exception:
        pass
    return shutil.which("ninja")


def _pybind11_cmake_dir() -> str:
    import pybind11  # build requirement

    return pybind11.get_cmake_dir()


def _parallel_jobs() -> int:
    for var in ("CMAKE_BUILD_PARALLEL_LEVEL", "MAX_JOBS"):
        val = os.environ.get(var, "").strip()
        if val.isdigit() and int(val) > 0:
            return int(val)
    return max(1, os.cpu_count() or 1)


class NativeBuildError(RuntimeError):
    pass


class CMakeExtension(Extension):
    """An extension built by CMake; `sources` is left empty on purpose."""

    def __init__(self, name: str, sourcedir: str | os.PathLike = ROOT) -> None:
        super().__init__(name, sources=[])
        self.sourcedir = str(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def get_source_files(self) -> list[str]:
        # Lets `sdist` ship the native sources (CMakeLists.txt, csrc/, kernels/).
        files: list[str] = []
        for entry in NATIVE_SOURCES:
            p = ROOT / entry
            if p.is_file():
                files.append(entry)
            elif p.is_dir():
                files.extend(
                    str(f.relative_to(ROOT)).replace(os.sep, "/")
                    for f in sorted(p.rglob("*"))
                    if f.is_file() and "__pycache__" not in f.parts
                )
        return files

    def build_extensions(self) -> None:
        mode = _cuda_mode()
        failed = []
        for ext in self.extensions:
            if not isinstance(ext, CMakeExtension):
                self.build_extension(ext)
                continue
            if not self._build_native(ext, mode):
                failed.append(ext)
        # A skipped extension must not be reported as an output (editable
        # installs copy every output back into the source tree).
        for ext in failed:
            self.extensions.remove(ext)

    # -- helpers ---------------------------------------------------------
    def _build_native(self, ext: CMakeExtension, mode: str) -> bool:
        # Never ship a module left over from an earlier build in build_lib.
        Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
        attempts = ["auto", "0"] if mode == "auto" else [mode]
        errors: list[str] = []
        for cuda in attempts:
            try:
                self._cmake_build(ext, cuda)
                return True
            except NativeBuildError as exc:
                errors.append(f"LNLATTEN_CUDA={cuda}: {exc}")
                if cuda == "auto":
                    _log("native build with CUDA=auto failed; retrying CPU-only (LNLATTEN_CUDA=0)")
        if mode == "1" or _require_native():
            reason = "LNLATTEN_CUDA=1" if mode == "1" else "LNLATTEN_REQUIRE_NATIVE=1"
            raise NativeBuildError(
                f"building the native extension {ext.name} failed and {reason} is set:\n  "
                + "\n  ".join(errors)
            )
        _warn_banner(
            [
                f"the native extension {ext.name} could not be built.",
                *errors,
                "Installing the pure-Python package only; lnlatten_fast will use its",
                "pure PyTorch backend. Set LNLATTEN_REQUIRE_NATIVE=1 to make this an error",
                "(use `pip install -v` to see the compiler/CMake output).",
            ]
        )
        return False

    def _cmake_build(self, ext: CMakeExtension, cuda: str) -> None:
        cmake = _find_cmake()
        if cmake is None:
            raise NativeBuildError("cmake not found (pip install cmake, or put it on PATH)")
        try:
            pybind11_dir = _pybind11_cmake_dir()
        except Exception as exc:  # pragma: no cover - pybind11 is a build requirement
            raise NativeBuildError(f"pybind11 not importable: {exc}") from exc

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        extdir.mkdir(parents=True, exist_ok=True)
        build_type = "Debug" if self.debug else "Release"
        ninja = _find_ninja()
        generator = os.environ.get("CMAKE_GENERATOR") or ("Ninja" if ninja else None)

        configure = [
            cmake,
            "-S", ext.sourcedir,
            f"-Dpybind11_DIR={pybind11_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DLNLATTEN_CUDA={cuda}",
        ]
        arch = os.environ.get("LNLATTEN_CUDA_ARCH", "").strip()
        if arch:
            configure.append(f"-DLNLATTEN_CUDA_ARCHITECTURES={arch}")
        if generator and not os.environ.get("CMAKE_GENERATOR"):
            configure += ["-G", generator]
        if generator == "Ninja" and ninja:
            configure.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        configure += shlex.split(os.environ.get("LNLATTEN_CMAKE_ARGS", ""))

        # Build folder: reused only if it was configured for exactly this
        # source dir / generator / toolchain / options; otherwise wiped.
        build_dir = Path(self.build_temp).resolve() / f"cmake-{ext.name}-cuda{cuda}"
        key = {
            "sourcedir": ext.sourcedir,
            "generator": generator or "",
            "cmake": cmake,
            "configure": list(configure),
        }
        stamp = self._prepare_build_dir(build_dir, key)
        configure += ["-B", str(build_dir)]

        _log(f"configuring ({'CUDA ' + cuda}): {' '.join(shlex.quote(c) for c in configure)}")
        self._run(configure, "CMake configure")
        build = [cmake, "--build", str(build_dir), "--config", build_type, "--target", "_C",
                 "--parallel", str(_parallel_jobs())]
        self._run(build, "CMake build")

        built = Path(self.get_ext_fullpath(ext.name))
        if not built.is_file():
            raise NativeBuildError(f"CMake finished but {built} was not produced")
        stamp.write_text(json.dumps(key))
        _log(f"built {built}")

    @staticmethod
    def _prepare_build_dir(build_dir: Path, key: dict) -> Path:
        """Wipe `build_dir` unless its stamp proves it was configured for `key`.

        The stamp is only written after a successful build, so a folder left
        behind by a failed or foreign configure is never reused.
        """
        stamp = build_dir / "lnlatten_build_key.json"
        if build_dir.exists():
            reuse = False
            try:
                reuse = json.loads(stamp.read_text()) == key
            except Exception:
                reuse = False
            cache = build_dir / "CMakeCache.txt"
            if reuse and cache.is_file():
                home = ""
                for line in cache.read_text(errors="replace").splitlines():
                    if line.startswith("CMAKE_HOME_DIRECTORY:"):
                        home = line.split("=", 1)[1].strip()
                        break
                reuse = bool(home) and Path(home).resolve() == Path(key["sourcedir"])
            else:
                reuse = False
            if not reuse:
                shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        return stamp

    @staticmethod
    def _run(cmd: list[str], what: str) -> None:
        try:
            subprocess.run(cmd, check=True)
        except FileNotFoundError as exc:
            raise NativeBuildError(f"{what}: executable not found: {exc}") from exc
        except OSError as exc:
            raise NativeBuildError(f"{what}: could not run: {exc}") from exc
        except subprocess.CalledProcessError as exc:
            raise NativeBuildError(f"{what} failed with exit code {exc.returncode}") from exc


setup(
    ext_modules=[CMakeExtension("lnlatten_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
