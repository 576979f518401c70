"""Batches from decoded uint8 images, augmented on the training device.

Images are already decoded and resized (see `cache`), so a batch is a slice of uint8 memory:
it is gathered, moved to the device (pinned and non-blocking on CUDA, with the next batch
prepared on a side thread), and only there turned into floats, flipped and cropped. Every
random choice comes from a `torch.Generator` seeded per epoch, so a run is reproducible.
"""

from __future__ import annotations

import threading
from queue import Queue

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["to_model_input", "augment", "BatchLoader"]

MEAN, STD = 0.5, 0.5


def to_model_input(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], channels-last in memory."""
    x = batch_u8.permute(0, 3, 1, 2).float()  # NHWC storage = channels-last NCHW view
    return x.mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)


def augment(x: torch.Tensor, generator: torch.Generator, crop_padding: int) -> torch.Tensor:
    """Random horizontal flip and random crop (pad by `crop_padding` by replication, crop back)."""
    batch, _, height, width = x.shape
    device = x.device
    flip = torch.rand(batch, generator=generator, device=generator.device) < 0.5
    x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
    if crop_padding <= 0:
        return x
    span = 2 * crop_padding + 1
    dy = torch.randint(span, (batch,), generator=generator, device=generator.device).to(device)
    dx = torch.randint(span, (batch,), generator=generator, device=generator.device).to(device)
    padded = F.pad(x, (crop_padding,) * 4, mode="replicate")
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
    batch_idx = torch.arange(batch, device=device)[:, None, None, None]
    chan_idx = torch.arange(x.shape[1], device=device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows, cols].contiguous(memory_format=torch.channels_last)


class BatchLoader:
    """Iterate (x, y) batches of `indices` of a uint8 image array, on `device`.

    `augment` turns on flip + crop. `epoch_seed` fixes the shuffle and the augmentation.
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
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.augment, self.crop_padding = shuffle, augment, crop_padding
        self.epoch_seed, self.drop_last = epoch_seed, drop_last

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

    def _chunks(self, order: np.ndarray):
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch_seed)
        order = self._order(generator)
        host_batches = self._prefetched(order) if self.device.type == "cuda" else map(self._host_batch, self._chunks(order))
        for x_u8, y in host_batches:
            x = to_model_input(x_u8.to(self.device, non_blocking=True))
            if self.augment:
                x = augment(x, generator, self.crop_padding)
            yield x, y.to(self.device, non_blocking=True)

    def _prefetched(self, order: np.ndarray, depth: int = 2):
        """Gather and pin the next batches on a thread while the device works."""
        queue: Queue = Queue(maxsize=depth)
        done = object()

        def work():
            try:
                for chunk in self._chunks(order):
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
