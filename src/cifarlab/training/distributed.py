"""Multi-process training under torchrun: DistributedDataParallel with gloo (CPU) or nccl (CUDA).

`--batch-size` stays the *global* batch: each of the K ranks takes its 1/K slice of every global
batch of the shared, seeded permutation, and DDP averages the gradients, so one step equals the
single-process step on the whole batch (exactly so for models without BatchNorm or dropout,
whose statistics / masks are per rank). Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarlab.errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t


SINGLE = Dist()


def from_environment() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(d: Dist, device: torch.device, batch_size: int) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not d.enabled:
        return device
    if batch_size % d.world:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{d.world} processes")
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def broadcast_object(obj, d: Dist):
    """Rank 0's value on every rank (the run folder name, chosen once)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP around the model (parameters broadcast from rank 0); the plain model when single."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, without torch.compile's and DDP's wrappers (torchvision's model_without_ddp)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


# Rank r draws its dropout masks from seed + RANK_SEED_STRIDE * (r + 1): a stream of its own.
RANK_SEED_STRIDE = 1_000_003


def seed_per_rank(d: Dist, seed: int) -> None:
    """Under torchrun, reseed torch's generator with a seed of this rank's own; nothing when single."""
    if d.enabled:
        torch.manual_seed(seed + RANK_SEED_STRIDE * (d.rank + 1))
