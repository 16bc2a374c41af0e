"""Where a fast94 training step's time goes, next to legacy airbench94's: one process, one CPU, the same data.

    python benchmarks/step_profile.py --airbench CHECKOUT --data-dir DIR [--recipe fast94-sgd|fast94-muon]
        [--steps N] [--malloc reuse|system] [--first airbench94] [--top 20]

For each side, in turn: one warm-up step, then N timed steps (default 48, one epoch of CIFAR-10 at batch 1,024),
with their wall time split into data (fetching and augmenting the batch) and step (forward, loss, backward,
optimizer, lookahead), and the process's user and system CPU seconds and minor page faults over them; then N
steps under torch.profiler, whose top operators (self CPU ms per step) are printed side by side. The last
line is JSON (both sides), for BENCHMARKS.md.

cifarlab's side is the real trainer (`setup` of the recipe, then `train_step` and the lookahead on batches from
its own loader, so augmentation, autocast and the optimizer count). airbench's side is legacy/airbench94.py from
the checkout, edited for the CPU at run time exactly as benchmarks/cpu_anchors.py edits it and loaded as a
module; its step (forward, summed label-smoothed loss, backward, Nesterov SGD, the lookahead every 5 steps) is
driven here because the script keeps it inside main(), and its loader augments a whole epoch when an epoch
starts, which the timed steps include once per epoch. Its optimizer's learning rates are not upstream's: the
profile is of the operators, not of training.

--malloc: the process's allocator around both sides. reuse (what cifarlab's CPU training does during a run,
training/cpu_memory.py) keeps freed memory for the next step; system is glibc's default, which returns every
block above 32 MB to the kernel when it is freed, so each step faults its activations in afresh (the system
time and the page faults show it). Both sides run under the same setting. Compare wall times only between
sides of one run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F

from campaign import machine
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

    def step(i: int) -> float:
        start = time.perf_counter()
        x, y = next(batches)
        fetched = time.perf_counter()
        trainer.train_step(x, y)
        if trainer.lookahead is not None:
            trainer.lookahead.step(i)
        return fetched - start
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

    def step(i: int) -> float:
        start = time.perf_counter()
        x, y = next(batches)
        fetched = time.perf_counter()
        loss = F.cross_entropy(net(x), y, label_smoothing=hyp["opt"]["label_smoothing"], reduction="none").sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 5 == 0:
            lookahead.update(net, decay=0.5)
        return fetched - start
    return step, hyp["opt"]["batch_size"]


def measure(step, steps: int) -> dict:
    """N steps after a warm-up one: wall seconds per step (data and step apart), CPU seconds and page faults."""
    step(1)                                  # warm-up: first-epoch caches, oneDNN primitives
    before, start, data = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
    for i in range(2, 2 + steps):
        data += step(i)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps, "data_ms_per_step": 1e3 * data / steps,
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def profile(step, steps: int) -> dict[str, float]:
    """{operator: self CPU ms per step}."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(2 + steps, 2 + 2 * steps):
            step(i)
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--airbench", required=True, help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in the official python layout (>= 1,024 train images)")
    p.add_argument("--recipe", default="fast94-sgd", help="cifarlab's side (fast94-sgd: the SGD recipe, as airbench94)")
    p.add_argument("--steps", type=int, default=48, help="steps timed, then as many profiled (48: one epoch)")
    p.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                   help="the process's allocator for both sides (reuse: cifarlab's CPU setting)")
    p.add_argument("--first", choices=("fast94", "airbench94"), default="fast94", help="which side runs first")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    from cifarlab.training.cpu_memory import current, keep_freed_memory

    order = ["fast94", "airbench94"] if args.first == "fast94" else ["airbench94", "fast94"]
    with keep_freed_memory() if args.malloc == "reuse" else nullcontext():
        malloc = current()
        timed, ops, batch = sides(args, order)
    report(args, order, malloc, timed, ops, batch)


def sides(args, order: list[str]) -> tuple[dict, dict, dict]:
    """Each side measured, then profiled, in `order`."""
    timed, ops, batch = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        airbench_data(args.data_dir, Path(tmp))
        for side in order:
            step, batch[side] = (cifarlab_step(args, str(Path(tmp) / "run")) if side == "fast94"
                                 else airbench_step(args, Path(tmp)))
            timed[side] = measure(step, args.steps)
            ops[side] = profile(step, args.steps)
    return timed, ops, batch


def report(args, order: list[str], malloc: str, timed: dict, ops: dict, batch: dict) -> None:
    names = {"fast94": args.recipe, "airbench94": "airbench94"}
    a, b = ops["fast94"], ops["airbench94"]
    cpu = machine(device="cpu")
    print(f"one process, {cpu}, {torch.get_num_threads()} threads, "
          f"malloc {malloc}, order {' then '.join(names[s] for s in order)}")
    for side in order:
        t = timed[side]
        print(f"{names[side]:<12} batch {batch[side]}: {t['wall_ms_per_step']:.0f} ms/step "
              f"({t['wall_ms_per_step'] / batch[side]:.3f} ms/image; data {t['data_ms_per_step']:.0f} ms), "
              f"user {t['user_s']:.1f} s, system {t['system_s']:.1f} s, {t['minor_faults']:,} page faults "
              f"over {t['steps']} steps")
    print(f"{'operator':<44} {names['fast94'] + ' ms':>14} {'airbench94 ms':>14}")
    for op in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0)))[:args.top]:
        print(f"{op[:44]:<44} {a.get(op, 0):14.1f} {b.get(op, 0):14.1f}")
    print(f"{'total self CPU':<44} {sum(a.values()):14.1f} {sum(b.values()):14.1f}")
    print(json.dumps({"benchmark": "step_profile", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "cpu": cpu, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "malloc": malloc, "order": order,
                      "recipe": args.recipe, "batch": batch, "timed": timed}))


if __name__ == "__main__":
    main()
