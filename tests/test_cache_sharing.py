"""One decoded-image cache shared by many runs (issue 19, the cache): entries of different keys
coexist, clean-up removes only superseded entries nobody is opening, temporaries of killed
writers go away, and a full disk or an unwritable directory is named by `cache_dir`.

Each test names the fault it injects; each was seen to fail before its fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lnlatten_fast import sweep as sweep_cli
from lnlatten_fast.data import cache
from lnlatten_fast.data.datasets import Sample
from lnlatten_fast.data.sources import load_split
from lnlatten_fast.errors import ParameterError, cli_message
from lnlatten_fast.training import sweeps


def _entries(directory) -> set[str]:
    """The complete entries in a cache directory, by their images file's stem."""
    return {p.name[: -len(".npy")] for p in directory.glob("*.npy") if not p.name.endswith(".labels.npy")}


def _temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp"))


def _no_build():
    raise AssertionError("the cache entry was rebuilt")


def test_runs_of_different_seeds_and_sizes_keep_each_others_entries(tmp_path):
    """Fault: two synthetic runs with a different seed or size share the cache. Before: each
    build removed every `{name}-{size}px-*` file not of its own key, so the runs rebuilt (and,
    overlapping, lost) each other's entries."""
    for seed, size in ((0, 32), (1, 32), (0, 40)):
        load_split("synthetic", "train", size, cache_dir=tmp_path, seed=seed, synthetic_size=7)
    assert len(_entries(tmp_path)) == 3
    for seed, size in ((0, 32), (1, 32), (0, 40)):  # each served as it is, none rebuilt
        key = f"seed{seed}-start0-n7-v1"
        cache.cached_arrays(tmp_path, "synthetic-train", size, key, _no_build)


def _face(path, colour):
    Image.new("RGB", (20, 20), colour).save(path)


def test_a_superseded_entry_is_removed_unless_another_process_is_opening_it(tmp_path):
    """Fault: a source changes while another process opens the old entry. After: the old entry
    (same sources, older fingerprint) is removed only when nobody holds its lock; entries of
    another identity are never touched."""
    source, other = tmp_path / "a.png", tmp_path / "b.png"
    _face(source, (255, 0, 0))
    _face(other, (0, 0, 255))
    directory = tmp_path / "cache"
    cache.build_image_cache([Sample(1, path=other)], 16, "other", directory)
    cache.build_image_cache([Sample(1, path=source)], 16, "faces", directory)
    (first,) = _entries(directory) - {e for e in _entries(directory) if e.startswith("other-")}

    # Another process between "the entry exists" and opening its files: it holds a shared lock.
    with open(directory / f"{first}.lock", "a+") as reader:
        fcntl.flock(reader, fcntl.LOCK_SH)
        _face(source, (0, 255, 0))
        os.utime(source, ns=(1, 1))
        second = cache.build_image_cache([Sample(1, path=source)], 16, "faces", directory)
        assert (second.images[0] == [0, 255, 0]).all()
        assert first in _entries(directory)  # kept: it is being opened

    _face(source, (0, 0, 0))
    os.utime(source, ns=(2, 2))
    cache.build_image_cache([Sample(1, path=source)], 16, "faces", directory)
    faces = {e for e in _entries(directory) if e.startswith("faces-")}
    assert len(faces) == 1 and first not in faces  # both superseded entries are gone
    assert len(_entries(directory)) == 2  # the other identity's entry stays
    assert sorted(p.name for p in directory.glob("faces-*")) == sorted(
        f"{next(iter(faces))}{suffix}" for suffix in (".npy", ".labels.npy", ".skipped.json", ".lock"))


def _save_until_the_disk_is_full(fh, array, *args, **kwargs):
    """np.save that writes half of the array, then finds the disk full."""
    np.lib.format.write_array(fh, array[: max(1, len(array) // 2)])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_cache_file_and_cache_dir_and_removes_the_partial_file(tmp_path, monkeypatch):
    """Fault: the disk fills while the cache is written. Before: "error: 2457600 requested and
    1040256 written", no file or flag named, and the partial .tmp stayed."""
    monkeypatch.setattr(cache.np, "save", _save_until_the_disk_is_full)
    with pytest.raises(ParameterError) as raised:
        load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=14)
    message = cli_message(raised.value)
    assert message.startswith(f"error: --cache-dir {tmp_path}: writing the cache file synthetic-train-32px-")
    assert "No space left on device" in message and "point --cache-dir or $LNLATTEN_CACHE elsewhere" in message
    assert _temporaries(tmp_path) == [] and _entries(tmp_path) == set()
    monkeypatch.undo()
    assert len(load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=14)) == 14


# A cache writer that SIGKILLs itself halfway through writing the images (argv: cache dir).
_KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
from lnlatten_fast.data import cache
from lnlatten_fast.data.sources import load_split

real_save = np.save
def save(fh, array, *args, **kwargs):
    if array.ndim == 4:
        fh.write(b"\x93NUMPY partial")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(fh, array, *args, **kwargs)
cache.np.save = save
load_split("synthetic", "train", 32, cache_dir=sys.argv[1], synthetic_size=14)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_build(tmp_path):
    """Fault: SIGKILL while the cache is written. Before: the .tmp stayed in the cache forever."""
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stderr=subprocess.PIPE)
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    (left,) = _temporaries(tmp_path)
    entry = "synthetic-train-32px-seed0-start0-n14-v1"
    assert left.startswith(f".{entry}.npy.") and str(writer.pid) in left  # named by its writer's PID
    # A live writer's (this process's) temporary of another entry: kept.
    live = tmp_path / left.replace(str(writer.pid), str(os.getpid())).replace("synthetic-train", "synthetic-test")
    live.write_bytes(b"being written")
    load_split("synthetic", "train", 32, cache_dir=tmp_path, synthetic_size=14)
    assert _temporaries(tmp_path) == [live.name] and entry in _entries(tmp_path)


def _unwritable(path, monkeypatch):
    """`path` as a read-only directory (for root too, who may write into any directory)."""
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        real_open = os.open

        def open_in_read_only_directory(name, flags, *args, **kwargs):
            if os.path.dirname(os.fspath(name)) == str(path) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(name))
            return real_open(name, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", open_in_read_only_directory)


@pytest.mark.parametrize("fault", ["uncreatable", "read-only"])
def test_an_unusable_cache_dir_is_refused_before_decoding(tmp_path, monkeypatch, fault):
    """Fault: a read-only or uncreatable cache directory. Before: the run failed only after
    decoding everything, naming a .tmp file or "[Errno 17]", never --cache-dir."""
    if fault == "uncreatable":
        (tmp_path / "file").write_text("not a directory")
        directory = tmp_path / "file" / "cache"
        problem = "cannot be created (Not a directory)"
    else:
        directory = tmp_path / "read-only"
        _unwritable(directory, monkeypatch)
        problem = "is not writable (Permission denied)"
    hint = ": point --cache-dir or $LNLATTEN_CACHE at a writable directory"
    try:
        with pytest.raises(ParameterError) as given:
            cache.cached_arrays(directory, "faces", 32, "v1", _no_build)
        assert cli_message(given.value) == f"error: --cache-dir {directory} {problem}{hint}"
        monkeypatch.setenv("LNLATTEN_CACHE", str(directory))
        with pytest.raises(ParameterError) as default:
            cache.cached_arrays(None, "faces", 32, "v1", _no_build)
        assert cli_message(default.value) == (
            f"error: --cache-dir {directory} (the default, from $LNLATTEN_CACHE) {problem}{hint}")
    finally:
        if directory.is_dir():
            directory.chmod(0o755)


def test_sweep_with_two_seeds_and_two_jobs_twice_in_a_row(tmp_path, capsys):
    """Fault: `sweep --seeds 2 --jobs 2` with one cache. Before: the two seeds' runs removed each
    other's cache entries, and overlapping builds failed with FileNotFoundError on .labels.npy."""
    directory = tmp_path / "cache"
    flags = ["--epochs", "1", "--synthetic-train", "14", "--synthetic-test", "7", "--image-size", "32",
             "--batch-size", "8", "--cache-dir", str(directory)]
    for attempt, runs in (("first", 8), ("second", 4)):
        out = tmp_path / attempt
        if attempt == "second":  # half the settings count as done, to save time; both seeds of the rest overlap
            for setting in sweeps.SWEEPS["variants"][1][:2]:
                for seed in (0, 1):
                    done = sweeps.run_dir(out, setting, seed)
                    done.mkdir(parents=True)
                    (done / "summary.json").write_text('{"test_accuracy_last10_mean": 0.5}')
        assert sweep_cli.main(["variants", "--seeds", "2", "--jobs", "2", "--out", str(out), *flags]) == 0, \
            capsys.readouterr().err
        assert f"{runs} run(s) to train" in capsys.readouterr().out
        for log in out.glob("*/seed*.log"):
            assert "Error" not in log.read_text(), log
    splits = (("train", 0, 14), ("test", 1000000, 7))
    assert _entries(directory) == {f"synthetic-{split}-32px-seed{seed}-start{start}-n{count}-v1"
                                   for seed in (0, 1) for split, start, count in splits}
