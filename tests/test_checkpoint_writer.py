"""The background checkpoint writer and the RNG state kept in last.pt.

The writer takes the writes off the training thread; these tests pin what it must not give up
for that: files equal to the payload at snapshot time, last.pt before the metrics line, errors
raised on the training thread naming the file, nothing lost on an exception, and back-pressure
instead of unbounded memory. CUDA is stood in for where the machine has none.
"""

from __future__ import annotations

import collections
import io
import threading
import time
import warnings

from pathlib import Path

import pytest
import torch

from lnlatten_fast.training import checkpoint


def trained_payload(epoch: int = 1, seed: int = 0):
    """A model, its optimizer after one step, and a last.pt-like payload built from them."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    history = [{"epoch": e, "test_accuracy": 0.5, "confusion": [[1, 0], [0, 1]]} for e in range(1, epoch + 1)]
    payload = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), history=history, epoch=epoch,
                   fold=None, rng=checkpoint.rng_state())
    return model, optimizer, payload


def assert_same(a, b):
    """Equal values and the same container types, tensors compared exactly."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def loaded(path) -> dict:
    payload = checkpoint.load(path)
    assert payload.pop("format") == checkpoint.FORMAT
    return payload


def hold_replace_of(monkeypatch, name: str) -> threading.Event:
    """Make the writer stop just before it renames `name` into place, until the event is set."""
    release, real_replace = threading.Event(), checkpoint.os.replace

    def replace(src, dst):
        if str(dst).endswith(name):
            assert release.wait(10), "the test never released the writer"
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    return release


# ---- what is written --------------------------------------------------------------------------
@pytest.mark.parametrize("background", [True, False])
def test_written_files_load_and_equal_the_payload(tmp_path, background):
    _, _, payload = trained_payload(epoch=2)
    best_keys = ("model", "epoch", "fold")
    with checkpoint.CheckpointWriter(background=background) as writer:
        last = writer.snapshot(payload, tmp_path / "last.pt")
        writer.submit(last, tmp_path / "last.pt", best=last.subset(best_keys), best_path=tmp_path / "best.pt")
    assert_same(loaded(tmp_path / "last.pt"), payload)
    assert_same(loaded(tmp_path / "best.pt"), {key: payload[key] for key in best_keys})
    assert loaded(tmp_path / "last.pt")["model"]._metadata == payload["model"]._metadata  # module versions kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary left


def test_the_snapshot_is_a_copy_training_can_change(tmp_path):
    """Fault: the writer writes the live tensors while the next epoch trains (a torn mix of two
    epochs in last.pt), or the history of a later epoch."""
    model, optimizer, payload = trained_payload()
    expected_weight = model[0].weight.detach().clone()
    expected_moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    snap = checkpoint.snapshot(payload)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # what the next epoch's steps do, in place
    optimizer.state[model[0].weight]["exp_avg"].mul_(0.0)
    payload["history"].append({"epoch": 2})
    payload["history"][0]["test_accuracy"] = 0.9
    with checkpoint.CheckpointWriter() as writer:
        writer.submit(snap, tmp_path / "last.pt")
    written = loaded(tmp_path / "last.pt")
    assert torch.equal(written["model"]["0.weight"], expected_weight)
    assert torch.equal(written["optimizer"]["state"][0]["exp_avg"], expected_moment)
    assert written["history"] == [{"epoch": 1, "test_accuracy": 0.5, "confusion": [[1, 0], [0, 1]]}]


def test_a_tied_weight_is_copied_once_and_stays_shared(tmp_path):
    """state_dict() detaches a tied weight into a new tensor under each name: one copy, one
    storage in the file, as torch.save of the live state_dict would write."""
    shared = torch.nn.Linear(3, 3)
    state = torch.nn.Sequential(shared, torch.nn.ReLU(), shared).state_dict()
    assert state["0.weight"] is not state["2.weight"]
    snap = checkpoint.snapshot({"model": state})
    copied = snap.payload["model"]
    assert copied["0.weight"] is copied["2.weight"] and copied["0.bias"] is copied["2.bias"]
    assert copied["0.weight"].data_ptr() != shared.weight.data_ptr()
    with checkpoint.CheckpointWriter(background=False) as writer:
        writer.submit(snap, tmp_path / "last.pt")
    written = loaded(tmp_path / "last.pt")["model"]
    assert written["0.weight"].data_ptr() == written["2.weight"].data_ptr()
    assert_same(written, state)


def test_non_finite_weights_are_refused_when_the_snapshot_is_taken(tmp_path):
    state = {"w": torch.tensor([1.0, float("inf")]), "steps": torch.tensor([3])}
    with pytest.raises(ValueError, match=r"refusing to save .*last\.pt: non-finite values in w$"):
        checkpoint.snapshot({"model": state}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="refusing to save a checkpoint: non-finite values in w$"):
        checkpoint.snapshot({"model": state})
    # Finite weights and a non-finite value outside the model (e.g. a metric) are fine.
    checkpoint.snapshot({"model": {"w": torch.ones(2)}, "history": [{"loss": torch.tensor(float("nan"))}]})


def test_submit_takes_only_snapshots(tmp_path):
    with checkpoint.CheckpointWriter() as writer:
        with pytest.raises(TypeError, match=r"checkpoint.snapshot\(\.\.\.\) for .*last\.pt, not a dict"):
            writer.submit({"model": {}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


# ---- order, back-pressure and the time it costs -----------------------------------------------------
def test_after_runs_once_last_pt_holds_its_epoch_and_submissions_keep_their_order(tmp_path, monkeypatch):
    """Fault: the metrics line appended before last.pt is renamed (a kill in between leaves
    metrics.jsonl an epoch ahead of the checkpoint), or epochs written out of order."""
    release = hold_replace_of(monkeypatch, "last.pt")
    seen = []

    def after(epoch):
        return lambda: seen.append((epoch, loaded(tmp_path / "last.pt")["epoch"]))

    with checkpoint.CheckpointWriter() as writer:
        writer.submit(writer.snapshot(trained_payload(epoch=1)[2]), tmp_path / "last.pt", after=after(1))
        time.sleep(0.05)
        assert seen == [] and not (tmp_path / "last.pt").exists()  # held before the rename: after() waits
        # The writer is busy: the next submit must wait for it (the training thread is held back).
        # The payload is built before the release is timed: on a loaded machine building it took
        # longer than the hold, and the submit then had nothing to wait for.
        payload = trained_payload(epoch=2)[2]
        before = writer.blocking_seconds
        threading.Timer(0.5, release.set).start()
        start = time.perf_counter()
        writer.submit(writer.snapshot(payload), tmp_path / "last.pt", after=after(2))
        waited = time.perf_counter() - start
        assert waited >= 0.25 and writer.blocking_seconds - before >= waited - 0.05
        assert seen == [(1, 1)]
    assert seen == [(1, 1), (2, 2)]


# ---- errors -------------------------------------------------------------------------------------
def fail_writing(monkeypatch, name: str, times: int = 10**9):
    """torch.save leaves part of `name` and fails as on a full disk (ENOSPC via torch's writer),
    the first `times` times it writes `name`."""
    real_save, failures = checkpoint.torch.save, []

    def save(obj, fh):
        if Path(fh.name).name.startswith(f".{name}.") and len(failures) < times:  # the temporary of `name`
            failures.append(fh.name)
            fh.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 0")
        return real_save(obj, fh)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())


def test_a_write_error_is_raised_by_the_next_wait_naming_the_file(tmp_path, monkeypatch):
    fail_writing(monkeypatch, "last.pt")
    appended = []
    writer = checkpoint.CheckpointWriter()
    snap = writer.snapshot(trained_payload()[2])
    writer.submit(snap, tmp_path / "last.pt", best=snap, best_path=tmp_path / "best.pt",
                  after=lambda: appended.append(1))  # returns: the error happens on the writer's thread
    with pytest.raises(OSError, match=rf"^could not write checkpoint {tmp_path / 'last.pt'}: no space left on device"):
        writer.wait()
    writer.close()  # raised once, not again
    assert appended == []  # no metrics line for an epoch last.pt lacks
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # and no partial temporary


def test_a_write_error_is_raised_by_the_next_submit_which_writes_nothing(tmp_path, monkeypatch):
    fail_writing(monkeypatch, "last.pt", times=1)  # the second epoch could be written, but must not be
    with checkpoint.CheckpointWriter() as writer:
        writer.submit(writer.snapshot(trained_payload()[2]), tmp_path / "last.pt")
        with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt"):
            writer.submit(writer.snapshot(trained_payload(epoch=2)[2]), tmp_path / "last.pt")
        writer.wait()
    assert list(tmp_path.iterdir()) == []


def test_the_synchronous_writer_raises_inside_submit(tmp_path, monkeypatch):
    fail_writing(monkeypatch, "last.pt")
    with checkpoint.CheckpointWriter(background=False) as writer:
        with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt"):
            writer.submit(writer.snapshot(trained_payload()[2]), tmp_path / "last.pt")
        assert writer._thread is None  # it never starts one
    assert list(tmp_path.iterdir()) == []


def test_leaving_on_an_exception_still_writes_what_was_submitted(tmp_path, monkeypatch):
    """Fault: the training thread raises (a divergence in the next epoch) while the writer is
    mid-write. Its last good epoch must still reach the disk, metrics line included."""
    release = hold_replace_of(monkeypatch, "last.pt")
    appended = []
    with pytest.raises(ArithmeticError, match="diverged"):
        with checkpoint.CheckpointWriter() as writer:
            writer.submit(writer.snapshot(trained_payload()[2]), tmp_path / "last.pt", after=lambda: appended.append(1))
            threading.Timer(0.1, release.set).start()
            raise ArithmeticError("diverged")
    assert loaded(tmp_path / "last.pt")["epoch"] == 1 and appended == [1]
    assert not writer._thread.is_alive()


def test_a_write_error_wins_over_the_exception_leaving_the_writer(tmp_path, monkeypatch):
    """The training error would say last.pt holds an epoch it does not: the write error is
    raised, the training error kept as its context."""
    fail_writing(monkeypatch, "last.pt")
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt") as error:
        with checkpoint.CheckpointWriter() as writer:
            writer.submit(writer.snapshot(trained_payload()[2]), tmp_path / "last.pt")
            raise ArithmeticError("diverged")
    assert isinstance(error.value.__context__, ArithmeticError)


def test_a_closed_writer_refuses_more(tmp_path):
    writer = checkpoint.CheckpointWriter()
    writer.close()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(checkpoint.snapshot({"epoch": 1}), tmp_path / "last.pt")


# ---- random number generators -----------------------------------------------------------------
def through_a_checkpoint(value):
    buffer = io.BytesIO()
    torch.save({"rng": value}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["rng"]


@pytest.mark.parametrize("saved", [False, True])
def test_cpu_draws_after_restoring_equal_the_draws_after_capturing(saved):
    torch.manual_seed(7)
    torch.rand(3)
    state = checkpoint.rng_state()
    expected = torch.rand(5)
    torch.rand(11)  # the generator moves on
    checkpoint.restore_rng_state(through_a_checkpoint(state) if saved else state)
    assert torch.equal(torch.rand(5), expected)


def test_the_bare_cpu_state_of_older_checkpoints_is_restored():
    old = through_a_checkpoint(torch.get_rng_state())  # what last.pt's "rng" held
    expected = torch.rand(4)
    checkpoint.restore_rng_state(old)
    assert torch.equal(torch.rand(4), expected)


def test_something_else_is_not_an_rng_state():
    with pytest.raises(ValueError, match="not a random number generator state"):
        checkpoint.restore_rng_state({"cuda": []})


class StandInCuda:
    """torch.cuda's RNG functions for `count` devices, each state a distinct ByteTensor."""

    def __init__(self, monkeypatch, count: int, initialized: bool = True):
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(count)]
        self.restored = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: self.restored.extend(states))


def test_cuda_states_go_into_the_checkpoint_and_come_back(monkeypatch):
    cuda = StandInCuda(monkeypatch, 2)
    state = through_a_checkpoint(checkpoint.rng_state())
    assert_same(state["cuda"], cuda.states)
    expected = torch.rand(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.restore_rng_state(state)
    assert_same(cuda.restored, cuda.states)
    assert torch.equal(torch.rand(3), expected)


def test_cuda_unused_is_not_started_to_ask_its_state(monkeypatch):
    StandInCuda(monkeypatch, 2, initialized=False)
    assert list(checkpoint.rng_state()) == ["cpu"]


@pytest.mark.parametrize("present", [0, 1])
def test_cuda_states_for_missing_devices_warn_once_and_the_rest_is_restored(monkeypatch, present):
    saved = through_a_checkpoint(checkpoint.rng_state() | {"cuda": StandInCuda(monkeypatch, 2).states})
    here = StandInCuda(monkeypatch, present)
    expected = torch.rand(3)
    with pytest.warns(RuntimeWarning) as caught:
        checkpoint.restore_rng_state(saved)
    missing = "cuda:1" if present else "cuda:0, cuda:1"
    assert len(caught) == 1 and f"state of {missing} not restored" in str(caught[0].message)
    assert_same(here.restored, saved["cuda"][:present])
    assert torch.equal(torch.rand(3), expected)


def test_a_snapshot_keeps_ordered_dicts_and_tuples_loadable_with_weights_only(tmp_path):
    payload = {"model": collections.OrderedDict(w=torch.ones(2)), "betas": (0.9, 0.999), "rng": checkpoint.rng_state()}
    with checkpoint.CheckpointWriter(background=False) as writer:
        writer.submit(checkpoint.snapshot(payload), tmp_path / "last.pt")
    assert_same(loaded(tmp_path / "last.pt"), payload)


# ---- on a CUDA device (skipped without one) --------------------------------------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_a_cuda_snapshot_is_a_pinned_host_copy_taken_before_training_goes_on(tmp_path):
    model = torch.nn.Conv2d(3, 8, 3).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 8, 8, device="cuda")).sum().backward()
    optimizer.step()
    payload = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), rng=checkpoint.rng_state())
    expected = {name: t.cpu() for name, t in model.state_dict().items()}
    snap = checkpoint.snapshot(payload, tmp_path / "last.pt")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # queued right behind the copies: must not reach them
    copied = snap.payload["model"]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in copied.values())
    assert copied["weight"].stride() == model.weight.stride()  # channels_last kept
    assert len(snap.payload["rng"]["cuda"]) == torch.cuda.device_count()
    with checkpoint.CheckpointWriter() as writer:
        writer.submit(snap, tmp_path / "last.pt")
    assert_same(loaded(tmp_path / "last.pt")["model"], collections.OrderedDict(expected))
    checkpoint.restore_rng_state(through_a_checkpoint(snap.payload["rng"]))


@cuda_only
def test_non_finite_cuda_weights_are_refused_at_snapshot_time(tmp_path):
    state = {"w": torch.tensor([1.0, float("nan")], device="cuda"), "b": torch.ones(2, device="cuda")}
    with pytest.raises(ValueError, match=r"refusing to save .*last\.pt: non-finite values in w$"):
        checkpoint.snapshot({"model": state}, tmp_path / "last.pt")


def test_snapshots_reuse_the_previous_host_buffers_and_still_copy():
    """A writer's second snapshot copies into the first one's host tensors (no fresh pages),
    with the new values; a tensor whose shape changed gets a new buffer."""
    weight, moment = torch.ones(4, 3), torch.zeros(5)
    buffers: dict = {}
    first = checkpoint.snapshot({"model": {"w": weight}, "optimizer": {"m": moment}}, buffers=buffers)
    first_ptrs = (first.payload["model"]["w"].data_ptr(), first.payload["optimizer"]["m"].data_ptr())
    weight.add_(1)
    second = checkpoint.snapshot({"model": {"w": weight}, "optimizer": {"m": torch.zeros(6)}}, buffers=buffers)
    assert second.payload["model"]["w"].data_ptr() == first_ptrs[0]
    assert torch.equal(second.payload["model"]["w"], torch.full((4, 3), 2.0))
    assert second.payload["model"]["w"].data_ptr() != weight.data_ptr()  # still a copy
    assert second.payload["optimizer"]["m"].shape == (6,)
    assert second.payload["optimizer"]["m"].data_ptr() != first_ptrs[1]
