"""Collectives under torchrun: where their tensors live, and what they compute.

nccl refuses a tensor on the CPU ("No backend type associated with device type cpu"), and gloo on a CPU cannot
tell: there the training device *is* the CPU. So the first tests give `Dist` a stand-in device (`meta`) with the
collectives mocked, and read the source for any other way to reach torch.distributed. The mocks cannot show
that the values are right: two real gloo processes run every Dist collective at the end, and a device that
refuses float64 (as MPS does) trains and evaluates.
"""

from __future__ import annotations

import ast
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import cifarlab
from cifarlab.recipes import build_config
from cifarlab.training import distributed, engine
from cifarlab.training.distributed import Dist
from cifarlab.training.evaluation import global_sums
from conftest import write_cifar10
from cifarlab.run import load_run

META = Dist(rank=1, world=2, local_rank=1, device=torch.device("meta"))


class Handed(Exception):
    """Raised by the mocked all_reduce once it has seen its tensor: a meta tensor has no values to read back."""


@pytest.fixture
def handed(monkeypatch) -> list[torch.Tensor]:
    seen = []

    def all_reduce(tensor, op=None, **kwargs):
        seen.append(tensor)
        raise Handed

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    return seen


def test_a_steps_decisions_are_reduced_on_the_ranks_device(handed):
    bad = torch.zeros((), dtype=torch.bool, device="meta")          # the loss check, kept on the device
    with pytest.raises(Handed):
        META.agree(signal.SIGTERM, True, bad)
    with pytest.raises(Handed):
        META.agree(None, False, bad)                                 # the end-of-epoch check
    assert [(t.device.type, tuple(t.shape)) for t in handed] == [("meta", (3,)), ("meta", (3,))]


def test_the_epoch_sums_are_reduced_on_the_ranks_device(handed):
    loss_sum = torch.zeros((), device="meta")
    correct = torch.zeros((), dtype=torch.long, device="meta")
    with pytest.raises(Handed):
        global_sums(META, loss_sum, correct, 640)                    # the image count is a Python int
    assert [(t.device.type, t.dtype) for t in handed] == [("meta", torch.float32)]    # MPS has no float64


def test_values_from_the_host_are_moved_to_the_ranks_device():
    t = META.tensor([3, True, 0.5, torch.ones((), device="meta")])
    assert t.device.type == "meta" and t.shape == (4,)


def test_nothing_outside_distributed_py_reaches_torch_distributed():
    """Every collective goes through Dist, which knows the device: no other file imports or names
    torch.distributed (nor DistributedDataParallel, whose wrapping lives there too)."""
    root = Path(cifarlab.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "distributed.py" and path.parent.name == "training":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
                names = [f"torch.{node.attr}"]
            offenders += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in names
                          if name.startswith("torch.distributed") or name.startswith("torch.nn.parallel")]
    assert offenders == []


def test_under_torchrun_a_gpu_run_agrees_on_its_flags_every_50_steps_not_every_step(tmp_path, monkeypatch):
    """fit() as rank 0 of 2, with the process group mocked, and the CPU treated like a GPU (a host sync every
    50 steps): its 80 steps take one decision (step 50) and the end-of-epoch check, not 80."""
    ops = []

    def all_reduce(tensor, op=None, **kwargs):
        assert tensor.device == torch.device("cpu")          # the rank's device, the one Dist was given
        ops.append("max" if op == torch.distributed.ReduceOp.MAX else "sum")

    def gather_object(obj, box, dst=0, **kwargs):
        box[:] = [obj, obj]

    monkeypatch.setattr(distributed, "from_environment", lambda: Dist(rank=0, world=2))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "gather_object", gather_object)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(distributed, "wrap", lambda model, d, device: model)     # no DDP without a real group
    monkeypatch.setattr(engine, "CHECK_EVERY_CPU", engine.CHECK_EVERY_ACCELERATOR)  # the CPU checks as a GPU: 50

    write_cifar10(tmp_path / "data", per_batch=128, test=20)
    data = tmp_path / "data"
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(data), "epochs": 1,
                        "batch_size": 8, "val_size": 0, "download": False, "quiet": True,
                        "precision": "fp32", "out": str(tmp_path / "run")})
    summary = engine.fit(cfg)
    assert summary["world_size"] == 2
    # 640 images, 4 per rank per step: 80 steps -> a decision at step 50 and the end-of-epoch check;
    # then the epoch's training sums, the test split's sums and, the final epoch's, its ECE bins.
    assert ops == ["max", "max", "sum", "sum", "sum"]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert len(saved["rng_ranks"]) == 2            # each rank's random state, for an exact resume


class NoFloat64(TorchDispatchMode):
    """The run's device made to refuse float64 as Apple's MPS does: every op that makes a float64 tensor raises
    (the CPU stands in for MPS: here the run's device and the host are one, so nothing may be float64 at all)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise TypeError(f"Cannot convert a MPS Tensor to float64 dtype ({func})")
        return out


def test_a_device_without_float64_trains_saves_mid_epoch_and_evaluates(tmp_path):
    """`--device auto` on a Mac failed at the end of epoch 1 and in `evaluate`: the sums were float64."""
    write_cifar10(tmp_path / "data", per_batch=20, test=20)
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(tmp_path / "data"), "epochs": 2,
                        "batch_size": 25, "val_size": 20, "download": False, "quiet": True, "precision": "fp32",
                        "checkpoint_every": 1e-9, "out": str(tmp_path / "run")})   # a mid-epoch save every step
    with NoFloat64():
        summary = engine.fit(cfg)
        evaluation = load_run(tmp_path / "run").evaluate(device="cpu")
    assert summary["epochs"] == 2 and 0 <= summary["final_test_acc"] <= 100
    assert evaluation["images"] == 20 and 0 <= evaluation["accuracy"] <= 100
    assert (tmp_path / "run" / "evaluation-test" / "evaluation.json").is_file()
    with pytest.raises(TypeError, match="float64"), NoFloat64():    # the stand-in does refuse float64
        torch.zeros(2).double()


# ---------------------------------------------------------------- the same code paths, with real collectives

def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One of two real gloo processes: every Dist collective, through distributed.setup as fit() joins."""
    import json
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    d = distributed.setup(distributed.from_environment(), torch.device("cpu"), batch_size=4)
    try:
        bad = torch.tensor(rank == 1)
        result = {
            "enabled": d.enabled,
            "all_sum": d.all_sum([rank + 1, torch.tensor(0.25 * (rank + 1)), True]),
            "all_max": d.all_max([rank, 10 - rank, torch.tensor(-1.5 * rank)]),
            "agree": list(d.agree(signal.SIGTERM if rank == 1 else None, rank == 0, bad)),
            "agree_quiet": list(d.agree(None, False, torch.tensor(False))),
            "global_sums": global_sums(d, torch.tensor(1.5 * (rank + 1)), torch.tensor(7 * (rank + 1)), 64),
            "broadcast": d.broadcast(f"runs/x-{rank}" if d.is_main else None),
            "gather": d.gather({"rank": rank, "rng": [rank] * 3}),
        }
    finally:
        distributed.teardown(d)
    with open(f"{out}/rank-{rank}.json", "w") as f:
        json.dump(result, f)


def test_two_real_gloo_processes_agree_on_every_collective(tmp_path):
    """Two processes joined by gloo on the CPU, as torchrun runs them: each Dist method with real collectives."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for rank, got in enumerate(ranks):
        assert got["enabled"] is True
        assert got["all_sum"] == [3.0, 0.75, 2.0]
        assert got["all_max"] == [1.0, 10.0, 0.0]
        assert got["agree"] == [int(signal.SIGTERM), True, True]      # one rank's signal, the other's save, one bad loss
        assert got["agree_quiet"] == [None, False, False]
        assert got["global_sums"] == [4.5, 21.0, 128.0]
        assert got["broadcast"] == "runs/x-0"                         # rank 0's folder on every rank
    assert ranks[0]["gather"] == [{"rank": 0, "rng": [0, 0, 0]}, {"rank": 1, "rng": [1, 1, 1]}]
    assert ranks[1]["gather"] is None
