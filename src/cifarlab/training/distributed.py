"""Multi-process training under torchrun: DistributedDataParallel with gloo (CPU) or nccl (CUDA).

`--batch-size` stays the *global* batch: each of the K ranks takes its 1/K slice of every global
batch of the shared, seeded permutation, and DDP averages the gradients, so one step equals the
single-process step on the whole batch (exactly so for models without BatchNorm or dropout,
whose statistics / masks are per rank). Only rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarlab.errors import UsageError


# The dtype of every on-device reduction (see Dist).
REDUCE_DTYPE = torch.float32


@dataclass(frozen=True)
class Dist:
    """This process's place in the run, and the only door to torch.distributed.

    Every collective goes through a method here and its tensor is built on `device`, this rank's training
    device: nccl (CUDA) refuses CPU tensors, and a collective on the CPU would sync the host each time.
    That tensor is float32: Apple's MPS has no float64 at all. float32 holds every count below 2**24 exactly
    (an epoch's images and correct answers) and the loss sums are float32 on the device already."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def tensor(self, values) -> torch.Tensor:
        """Numbers and 0-d tensors as one float32 vector on this rank's device (the tensors stay on it)."""
        return torch.stack([torch.as_tensor(v, device=self.device).to(REDUCE_DTYPE) for v in values])

    def all_sum(self, values) -> list[float]:
        """The values added over every rank (read back as they are in a single process)."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def all_max(self, values) -> list[float]:
        """The largest of each value over every rank."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def agree(self, signum: int | None, due: bool, bad: torch.Tensor) -> tuple[int | None, bool, bool]:
        """(stop signal, checkpoint due, loss went bad) as the max over ranks, so that every rank takes the same
        decision at the same step. Reading `bad` (a tensor on the device) back is a host sync."""
        if not self.enabled:
            return signum, due, bool(bad)
        signum, due, bad = self.all_max([signum or 0, due, bad])
        return int(signum) or None, bool(due), bad > 0

    def _all_reduce(self, values, op) -> list[float]:
        t = self.tensor(values)
        if self.enabled:
            dist.all_reduce(t, op=op)
        return t.tolist()      # Python floats: the widening to float64 happens on the host, not the device

    def broadcast(self, obj):
        """Rank 0's value on every rank (the run folder name, chosen once)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None on the others); [obj] in a single process."""
        if not self.enabled:
            return [obj]
        box = [None] * self.world if self.is_main else None
        dist.gather_object(obj, box, dst=0)
        return box

    def _object_device(self) -> torch.device | None:
        # Object collectives pickle into a tensor: under nccl it must sit on this rank's GPU.
        return self.device if self.device.type == "cuda" else None


SINGLE = Dist()


def from_environment() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(d: Dist, device: torch.device, batch_size: int) -> Dist:
    """Join the process group; returns `d` with this rank's device (cuda:LOCAL_RANK on GPUs), or `device`."""
    if not d.enabled:
        return dataclasses.replace(d, device=device)
    if batch_size % d.world:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{d.world} processes")
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dataclasses.replace(d, device=device)


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
