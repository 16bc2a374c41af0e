"""DeviceLoader: a whole split held on the device as uint8, shuffled and augmented in batches.

This replaces a torchvision Dataset + per-image PIL transforms + DataLoader
workers: the images never leave the device, a batch is one gather, and each
augmentation is a handful of tensor ops over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifarlab.data import augment
from cifarlab.data.formats import Split


@dataclass(frozen=True)
class AugmentSettings:
    ops: tuple[str, ...] = ()       # subset of config.AUGMENTATIONS
    crop_padding: int = 4
    jitter: float = 0.2
    cutout_size: int = 8


_MASK = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """A well-spread 63-bit seed from small integers (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class DeviceLoader:
    """Iterate (images, labels) batches: float, normalised, channels_last when asked.

    Randomness is a function of (seed, epoch, step): the permutation of epoch `e` and the
    augmentation of its batch `i` come from generators seeded with those numbers. So a run can
    restart at any step of any epoch (`set_position`) and see exactly the batches it would have
    seen, and ranks of a distributed run can share one permutation.

    shard=(rank, world): yield only this rank's 1/world slice of every (global) batch, augmented
    exactly as the whole batch would be in a single process.
    """

    def __init__(self, split: Split, batch_size: int, mean, std, device: torch.device,
                 shuffle: bool = False, augment: AugmentSettings = AugmentSettings(), seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, shard: tuple[int, int] = (0, 1)):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.epoch, self.start_step = 0, 0
        self.rank, self.world = shard
        # alt-flip: which images are mirrored in even epochs (the others in odd ones)
        self.flip_even = torch.rand(len(self.labels), generator=self._generator(-1, -1),
                                    device=device) < 0.5 if "alt-flip" in augment.ops else None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_position(self, epoch: int, step: int = 0) -> None:
        """The next iteration is epoch `epoch` (0-based), starting at batch `step`."""
        self.epoch, self.start_step = epoch, step

    def _generator(self, epoch: int, step: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_mix(self.seed, epoch, step))

    def __iter__(self):
        epoch, start = self.epoch, self.start_step
        self.epoch, self.start_step = epoch + 1, 0
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self._generator(epoch, -1), device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            g = self._generator(epoch, i) if self.augment.ops else None
            flips = self.flip_even[idx] ^ bool(epoch % 2) if self.flip_even is not None else None
            x, y = self._prepare(self.images[idx], g, flips), self.labels[idx]
            if self.world > 1:
                part = len(idx) // self.world
                x, y = x[self.rank * part:(self.rank + 1) * part], y[self.rank * part:(self.rank + 1) * part]
            yield x, y

    def _prepare(self, batch: torch.Tensor, g: torch.Generator | None, flips: torch.Tensor | None) -> torch.Tensor:
        ops = self.augment.ops
        if "crop" in ops or "translate" in ops:
            mode = "reflect" if "translate" in ops else "constant"
            batch = augment.random_crop(batch, self.augment.crop_padding, g, mode)
        if "flip" in ops:
            batch = augment.random_flip(batch, g)
        if flips is not None:
            batch = augment.flip_where(batch, flips)
        x = batch.float().div_(255)
        if "jitter" in ops:
            x = augment.color_jitter(x, self.augment.jitter, g)
        if "cutout" in ops:
            x = augment.cutout(x, self.augment.cutout_size, g)
        x = augment.normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
