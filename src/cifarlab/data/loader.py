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
    ops: tuple[str, ...] = ()       # subset of augment.AUGMENTATIONS
    crop_padding: int = 4
    jitter: float = 0.2
    cutout_size: int = 8


class DeviceLoader:
    """Iterate (images, labels) batches: float, normalised, channels_last when asked.

    Shuffling and augmentation draw from one generator seeded with `seed`;
    epoch `e` uses the same permutation in every run with that seed.
    """

    def __init__(self, split: Split, batch_size: int, mean, std, device: torch.device,
                 shuffle: bool = False, augment: AugmentSettings = AugmentSettings(), seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False):
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
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._prepare(self.images[idx]), self.labels[idx]

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        ops, g = self.augment.ops, self.generator
        if "crop" in ops:
            batch = augment.random_crop(batch, self.augment.crop_padding, g)
        if "flip" in ops:
            batch = augment.random_flip(batch, g)
        x = batch.float().div_(255)
        if "jitter" in ops:
            x = augment.color_jitter(x, self.augment.jitter, g)
        if "cutout" in ops:
            x = augment.cutout(x, self.augment.cutout_size, g)
        x = augment.normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
