"""FIRST DRAFT. Where does a fast94 step's time go, next to legacy airbench94's? One process, one CPU, both
stepped under torch.profiler, their top operators side by side (self CPU time per step).

    python benchmarks/step_profile.py --airbench CHECKOUT --data-dir DIR [--recipe fast94-sgd] [--steps 3] [--top 20]

cifarlab's side is the real trainer (`setup` of the recipe, then `train_step` and the lookahead on batches from its
own loader, so augmentation, autocast and the optimizer count). airbench's side is legacy/airbench94.py from the
checkout, edited for the CPU at run time exactly as benchmarks/cpu_anchors.py edits it and loaded as a module; its
step (forward, summed label-smoothed loss, backward, Nesterov SGD, the lookahead every 5 steps) is driven here
because the script keeps it inside main(). Its optimizer's learning rates are not upstream's: the profile is of
the operators, not of training. The first step of each (airbench precomputes its first epoch's augmentation
there) is left out. DIR needs >= 1,024 training images (cifar-mini or the full set).
Left to do: the muon script's step; ops grouped by phase (data, forward, backward, optimizer, lookahead).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import types
from pathlib import Path

import torch
from torch.nn import functional as F

from cpu_anchors import apply_edits, edits_for, find_script
from gpu_airbench import airbench_data

from cifarlab.recipes import train_config
from cifarlab.training import distributed
from cifarlab.training.device import resolve_precision
from cifarlab.training.engine import setup


def endless(loader, start_epoch):
    """Batches across epoch ends: a small data set has fewer batches than the steps profiled."""
    epoch = 0
    while True:
        start_epoch(epoch)
        yield from loader
        epoch += 1


def cifarlab_step(args, out: str):
    cfg = train_config({"model": "fast94", "dataset": "cifar10", "data_dir": args.data_dir, "device": "cpu",
                        "seed": 0, "out": out, "quiet": True, "tensorboard": False}, args.recipe)
    dist = distributed.setup(distributed.from_environment(), torch.device("cpu"), cfg.batch_size)
    trainer = setup(cfg, False, dist)
    trainer.model.train()
    loader = trainer.train_loader
    batches = endless(loader, lambda epoch: loader.set_position(epoch, 0))

    def step(i: int) -> None:
        x, y = next(batches)
        trainer.train_step(x, y)
        if trainer.lookahead is not None:
            trainer.lookahead.step(i)
    return step, cfg.batch_size


def airbench_step(args, work: Path):
    path = find_script(Path(args.airbench), "airbench94")
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    module = types.ModuleType("airbench94_cpu")
    module.__file__ = str(path)
    exec(compile(apply_edits(path.read_text(), edits_for("airbench94", bf16, None, None, False), str(path)),
                 str(path), "exec"), module.__dict__)
    hyp = module.hyp
    loader = module.CifarLoader(str(work / "cifar10"), train=True, batch_size=hyp["opt"]["batch_size"],
                                aug=hyp["aug"])
    net = module.make_net()
    module.init_whitening_conv(net[0], loader.normalize(loader.images[:5000]))
    norm = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD([dict(params=norm, lr=0.01), dict(params=other, lr=0.001)], momentum=0.85,
                          nesterov=True, weight_decay=5e-4)
    lookahead = module.LookaheadState(net)
    net.train()
    batches = endless(loader, lambda epoch: None)

    def step(i: int) -> None:
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y, label_smoothing=hyp["opt"]["label_smoothing"], reduction="none").sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 5 == 0:
            lookahead.update(net, decay=0.5)
    return step, hyp["opt"]["batch_size"]


def profile(step, steps: int) -> tuple[dict[str, float], float]:
    """{operator: self CPU ms per step}, and wall seconds per step (outside the profiler)."""
    step(1)                                  # warm-up: first-epoch caches, oneDNN primitives
    start = time.perf_counter()
    for i in range(2, 2 + steps):
        step(i)
    wall = (time.perf_counter() - start) / steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(2 + steps, 2 + 2 * steps):
            step(i)
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}, wall


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in the official python layout (>= 1,024 train images)")
    p.add_argument("--recipe", default="fast94-sgd", help="cifarlab's side (fast94-sgd: the SGD recipe, as airbench94)")
    p.add_argument("--steps", type=int, default=3, help="steps timed, then as many profiled")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        airbench_data(args.data_dir, Path(tmp))
        ours, ours_batch = cifarlab_step(args, str(Path(tmp) / "run"))
        theirs, their_batch = airbench_step(args, Path(tmp))
        (a, a_wall), (b, b_wall) = profile(ours, args.steps), profile(theirs, args.steps)
    print(f"wall per step (machine state unknown: no speed claim from a busy machine): {args.recipe} "
          f"{a_wall * 1e3:.0f} ms (batch {ours_batch}), airbench94 {b_wall * 1e3:.0f} ms (batch {their_batch})")
    print(f"{'operator':<44} {args.recipe + ' ms':>14} {'airbench94 ms':>14}")
    for op in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0)))[:args.top]:
        print(f"{op[:44]:<44} {a.get(op, 0):14.1f} {b.get(op, 0):14.1f}")
    print(f"{'total self CPU':<44} {sum(a.values()):14.1f} {sum(b.values()):14.1f}")


if __name__ == "__main__":
    main()
