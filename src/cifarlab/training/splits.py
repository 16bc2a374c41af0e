"""The images of one run: the dataset's splits (with the seeded val split and --limit-train applied),
and the on-device loaders that feed them to training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifarlab.data.formats import Split
from cifarlab.data.loader import AugmentSettings, DeviceLoader
from cifarlab.data.sources import DatasetInfo, class_balanced_split, load_dataset
from cifarlab.errors import UsageError
from cifarlab.settings import TrainConfig
from cifarlab.training.distributed import Dist


@dataclass
class Data:
    info: DatasetInfo
    classes: list[str]
    train: Split
    val: Split | None
    test: Split


def prepare_data(cfg: TrainConfig) -> Data:
    """Load the dataset, carve the seeded class-balanced val split, apply --limit-train."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download, image_size=cfg.image_size,
                      channels=cfg.channels, quiet=cfg.quiet)
    train, val = ds.train, ds.val
    if val is not None and cfg.val_size:
        raise UsageError(f"{cfg.dataset} has its own val/ folder; --val-size {cfg.val_size} would carve a second one")
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise UsageError(f"--val-size {cfg.val_size} must be smaller than the train split ({len(train)} images)")
        train_idx, val_idx = class_balanced_split(train.labels, cfg.val_size, cfg.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if cfg.limit_train and cfg.limit_train < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.limit_train]
        train = train.subset(keep.sort().values)
    return Data(ds.info, ds.classes, train, val, ds.test)


def make_loaders(data: Data, cfg: TrainConfig, device: torch.device, channels_last: bool,
                 dist: Dist) -> tuple[DeviceLoader, DeviceLoader | None, DeviceLoader]:
    """(train, val or None, test) loaders; under torchrun each rank takes its share of every split."""
    info = data.info
    aug = AugmentSettings(tuple(cfg.augment), cfg.crop_padding, cfg.jitter, cfg.cutout_size)
    train = DeviceLoader(data.train, cfg.batch_size, info.mean, info.std, device, shuffle=True, augment=aug,
                         seed=cfg.seed, drop_last=len(data.train) > cfg.batch_size,
                         channels_last=channels_last, shard=(dist.rank, dist.world))

    def eval_loader(split):
        # under torchrun each rank evaluates a contiguous slice; evaluate() adds the sums up
        part = split.subset(torch.arange(len(split)).tensor_split(dist.world)[dist.rank]) if dist.enabled else split
        return DeviceLoader(part, cfg.eval_batch_size, info.mean, info.std, device, channels_last=channels_last)
    return train, eval_loader(data.val) if data.val is not None else None, eval_loader(data.test)
