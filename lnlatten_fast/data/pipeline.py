"""Batches from decoded uint8 images, augmented on the training device.

Images are already decoded and resized (see `cache`), so a batch is a slice of uint8 memory:
it is gathered, moved to the device (pinned and non-blocking on CUDA, with the next batch
prepared on a side thread and copied on a side stream while the current one trains), and only
there turned into floats, flipped and cropped. Every random choice comes from a
`torch.Generator` seeded per epoch, so a run is reproducible; the augmentation's draws come
from a generator on the training device, so a step never waits for a host-to-device copy of
random numbers.
"""

from __future__ import annotations

import threading
from queue import Queue

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["to_model_input", "augment", "device_batch", "BatchLoader"]

MEAN, STD = 0.5, 0.5


def to_model_input(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], channels-last in memory."""
    x = batch_u8.permute(0, 3, 1, 2).float()  # NHWC storage = channels-last NCHW view
    return x.mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)


def augment(x: torch.Tensor, generator: torch.Generator | None, crop_padding: int) -> torch.Tensor:
    """Random horizontal flip and random crop (pad by `crop_padding` by replication, crop back).
    The draws come from `generator`, which must live on x's device (None: that device's default
    generator): random numbers made elsewhere would need a copy the host waits for."""
    batch, _, height, width = x.shape
    device = x.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator must be on the batch's device ({device.type}), got {generator.device}")
    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if crop_padding <= 0:
        return x
    span = 2 * crop_padding + 1
    dy = torch.randint(span, (batch,), generator=generator, device=device)
    dx = torch.randint(span, (batch,), generator=generator, device=device)
    padded = F.pad(x, (crop_padding,) * 4, mode="replicate")
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
    batch_idx = torch.arange(batch, device=device)[:, None, None, None]
    chan_idx = torch.arange(x.shape[1], device=device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows, cols].contiguous(memory_format=torch.channels_last)


def device_batch(x_u8: torch.Tensor, y: torch.Tensor, device: torch.device, *, augment_batch: bool = False,
                 generator: torch.Generator | None = None, crop_padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A host batch (uint8 (B, H, W, 3), int64 labels) as the model's input on `device`: copied
    (non-blocking: pinned host memory makes it asynchronous), scaled to [-1, 1] channels-last,
    and flipped and cropped with `generator`'s draws when `augment_batch`."""
    x = to_model_input(x_u8.to(device, non_blocking=True))
    if augment_batch:
        x = augment(x, generator, crop_padding)
    return x, y.to(device, non_blocking=True)


class BatchLoader:
    """Iterate (x, y) batches of `indices` of a uint8 image array, on `device`.

    `augment` turns on flip + crop. `epoch_seed` fixes the shuffle and the augmentation.
    `position()` says where the current pass stands (batches handed out, the random
    generators' states); a loader given it as `start` hands out exactly the batches, and
    draws exactly the augmentations, that the interrupted pass had left. `len` counts the
    whole pass either way.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        crop_padding: int = 0,
        epoch_seed: int = 0,
        drop_last: bool = False,
        start: dict | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.augment, self.crop_padding = shuffle, augment, crop_padding
        self.epoch_seed, self.drop_last = epoch_seed, drop_last
        self.start = start
        self._position: tuple[int, torch.Generator, torch.Generator] | None = None

    def position(self) -> dict:
        """Where the current pass stands: {"batches": handed out, "generator": the host
        generator's state, "device_generator": the CUDA augmentation generator's (on CUDA)}.
        Plain tensors and ints (a checkpoint holds it); only the pass's own draws are in it."""
        if self._position is None:
            raise RuntimeError("position() of a loader that has not started a pass")
        batches, generator, draws = self._position
        state = {"batches": batches, "generator": generator.get_state()}
        if draws is not generator:
            state["device_generator"] = draws.get_state()
        return state

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, generator: torch.Generator) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[torch.randperm(len(self.indices), generator=generator).numpy()]

    def _host_batch(self, chunk: np.ndarray):
        # Sorted reads are sequential on a memory map; the batch order is restored after.
        order = np.argsort(chunk, kind="stable")
        images = np.empty((len(chunk), *self.images.shape[1:]), dtype=np.uint8)
        images[order] = self.images[chunk[order]]
        x = torch.from_numpy(images)
        y = torch.from_numpy(np.ascontiguousarray(self.labels[chunk]))
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _chunks(self, order: np.ndarray, first: int = 0):
        stop = len(self) * self.batch_size
        for start in range(first * self.batch_size, min(stop, len(order)), self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch_seed)
        order = self._order(generator)  # from the seed, also when resuming: the order is the pass's
        # The CPU generator orders and augments, as it always did; CUDA draws on the device.
        cuda = self.device.type == "cuda"
        draws = torch.Generator(device=self.device).manual_seed(self.epoch_seed) if cuda else generator
        first = 0
        if self.start is not None:
            first = int(self.start["batches"])
            generator.set_state(self.start["generator"])
            if cuda:
                draws.set_state(self.start["device_generator"])
        self._position = (first, generator, draws)
        batches = self._cuda_batches(self._prefetched(order, first), draws) if cuda else (
            device_batch(x_u8, y, self.device, augment_batch=self.augment, generator=generator,
                         crop_padding=self.crop_padding)
            for x_u8, y in map(self._host_batch, self._chunks(order, first)))
        for handed_out, batch in enumerate(batches, start=first + 1):
            # Counted before the batch is handed out: a position taken while the caller works on
            # batch k says k. The augmentation of batch k + 1 is drawn only when it is asked for.
            self._position = (handed_out, generator, draws)
            yield batch

    def _cuda_batches(self, host_batches, generator: torch.Generator):
        """Copy batch k + 1 on a side stream while batch k trains: the compute stream only waits
        for the copy it is about to read."""
        copy_stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)

        def start_copy(batch):
            x_u8, y = batch
            with torch.cuda.stream(copy_stream):
                copied = x_u8.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(copy_stream)
            return copied, done

        pending = None
        for batch in host_batches:
            copied = start_copy(batch)
            if pending is not None:
                yield self._finish(pending, compute, generator)
            pending = copied
        if pending is not None:
            yield self._finish(pending, compute, generator)

    def _finish(self, pending, compute, generator):
        (x_u8, y), done = pending
        compute.wait_event(done)  # this batch's copy only, not the next one's behind it
        # Made on the copy stream, used on the compute stream: the allocator must not reuse
        # them before the compute stream is done.
        x_u8.record_stream(compute)
        y.record_stream(compute)
        return device_batch(x_u8, y, self.device, augment_batch=self.augment, generator=generator,
                            crop_padding=self.crop_padding)

    def _prefetched(self, order: np.ndarray, first: int = 0, depth: int = 2):
        """Gather and pin the next batches (from batch `first` on) on a thread while the device works."""
        queue: Queue = Queue(maxsize=depth)
        done = object()

        def work():
            try:
                for chunk in self._chunks(order, first):
                    queue.put(self._host_batch(chunk))
            except BaseException as error:  # re-raised on the consuming side, not lost
                queue.put(error)
            finally:
                queue.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()
