"""engine.fit: one training run, in the order it happens.

fit() sets up a Trainer (data, run folder, model, optimizer; or the checkpoint of the run it resumes),
runs the epochs (run_epoch: train_epoch, then score val and test, then metrics and checkpoints), and
writes summary.json; it returns the summary, which its caller prints and writes as summary.txt through
report/ (study/runs.py: train_run), so training imports nothing above it. The file reads in that order; the
helpers come after, in the order they are called.
The Trainer (trainer.py) holds the run's objects and its checkpoint; evaluation.py scores a split.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from contextlib import nullcontext

import torch

from cifarlab import __version__ as cifarlab_version   # the version only: cifarlab.* names the API above
from cifarlab.data.augment import normalize
from cifarlab.errors import UsageError
from cifarlab.fingerprint import SWITCHES, fingerprint, recorded_switches
from cifarlab.models import build_model, count_params, model_spec
from cifarlab.runfolder import BEST, LAST, RunFolder, release_folders
from cifarlab.settings import TrainConfig
from cifarlab.training import cpu_memory, distributed
from cifarlab.training.calibration import ECE_BINS
from cifarlab.training.device import Precision, cpu_threads, resolve_device, use_tf32
from cifarlab.training.diagnostics import Diagnostics, trim
from cifarlab.training.distributed import Dist
from cifarlab.training.evaluation import evaluate, global_sums
from cifarlab.training.lookahead import Lookahead
from cifarlab.training.optim import build_optimizer, build_scheduler
from cifarlab.training.progress import Progress, log_tensorboard, tensorboard_writer
from cifarlab.training.splits import Data, make_loaders, prepare_data
from cifarlab.training.state import RunState, StopSignals
from cifarlab.training.trainer import CompileWarmUp, Trainer, compile_model


# Steps between reads of the loss check (and, under torchrun, agreements on the stop flags). A read is a host
# sync: free on the CPU, so every step there; on a GPU (any device but the CPU) every 50 steps, so a signal or
# a due checkpoint waits up to 50 steps there.
CHECK_EVERY_CPU = 1
CHECK_EVERY_ACCELERATOR = 50
# A model with a data-dependent init (fast94's whitening stem) fits it to this many training images.
DATA_INIT_IMAGES = 5000
# What summary.json's time_to_result_s counts: the clock of airbench (the speed-run fast94 is measured against),
# so that the two compare. Its parts are summary.json's data_init_time_s, train_only_time_s, final_eval_time_s.
TIME_SCOPE = ("airbench's: data-dependent init (fast94's whitening) + training steps + final test evaluation "
              "with its TTA views; not data loading, compile warm-up, other evaluations (val, earlier epochs) "
              "or saving")


def fit(cfg: TrainConfig, resume: bool = False, model=None, on_epoch=None) -> dict:
    """Train `cfg` end to end and write its run folder (locked for this process); returns the summary dict,
    with the run folder as "run_dir" on rank 0 (the caller prints it and writes summary.txt: study.runs.train_run).

    resume: continue the run in cfg.out from checkpoints/last.pt, exactly where it stopped.
    model: the class, factory or nn.Module behind cfg.model when it is a Python object.
    on_epoch: called with each epoch's metrics row (cifarlab tune prunes a trial from there, by raising).
    Under torchrun (WORLD_SIZE > 1) this is one rank of a DistributedDataParallel run."""
    dist = distributed.setup(distributed.from_environment(), resolve_device(cfg.device), cfg.batch_size)
    trainer = None
    try:
        if not dist.is_main:   # only rank 0 prints and writes the run folder
            cfg = dataclasses.replace(cfg, quiet=True, tensorboard=False)
        # a CPU run keeps the memory it frees for its next step, and gives it back when it ends (cpu_memory.py)
        with cpu_threads(cfg.threads), (cpu_memory.keep_freed_memory() if dist.device.type == "cpu" else nullcontext()):
            trainer = setup(cfg, resume, dist, model)
            trainer.on_epoch = on_epoch
            with trainer.stop:
                for epoch in range(trainer.state.epoch + 1, cfg.epochs + 1):
                    run_epoch(trainer, epoch)
            return summarize(trainer)
    finally:
        if trainer is not None and trainer.writer is not None:
            trainer.writer.close()   # however the run ends: its events are flushed and the file handle freed
        release_folders()
        distributed.teardown(dist)


# ---------------------------------------------------------------- setup

def setup(cfg: TrainConfig, resume: bool, dist: Dist, supplied=None) -> Trainer:
    """Everything before the first step, on dist.device. A resumed run restores its checkpoint; a new one writes
    config.json."""
    device = dist.device
    precision = Precision.for_training(cfg.precision, device)
    checkpoint = RunFolder(cfg.out).load_checkpoint(LAST) if resume else None
    load_start = time.perf_counter()
    data = prepare_data(cfg)
    load_time = time.perf_counter() - load_start
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    use_tf32(precision.name)
    channels_last = cfg.channels_last and device.type != "mps"
    # The model first: one that does not fit the data is refused before a run folder exists.
    bare_model, spec, init_time = build_run_model(cfg, data, device, channels_last, resume, supplied)
    run = RunFolder(dist.broadcast(make_run(cfg, resume).path if dist.is_main else None))
    params = count_params(bare_model)
    uncompiled = distributed.wrap(bare_model, dist, device)
    model = compile_model(uncompiled, cfg)
    distributed.seed_per_rank(dist, cfg.seed)   # dropout masks (the init above used one seed on every rank)
    train_loader, val_loader, test_loader = make_loaders(data, cfg, device, channels_last, dist)
    optimizer = build_optimizer(bare_model, cfg)
    steps = len(train_loader)
    trainer = Trainer(
        cfg, run, dist, device, precision, model, optimizer, build_scheduler(optimizer, cfg, steps),
        scaler=torch.amp.GradScaler(device.type) if precision.name == "fp16" else None,
        train_loader=train_loader, val_loader=val_loader, test_loader=test_loader if cfg.test else None,
        state=RunState(),
        progress=Progress(cfg.quiet, cfg.epochs), stop=StopSignals(), params=params, load_time=load_time,
        uncompiled=uncompiled, lookahead=Lookahead(bare_model, cfg.epochs * steps) if cfg.lookahead else None)
    trainer.state.data_init_time = init_time    # a resumed run restores the init time of the run it continues
    if checkpoint is not None:
        trainer.restore(checkpoint)
        if trainer.state.epoch >= cfg.epochs:
            raise UsageError(f"{run.path} already finished its {cfg.epochs} epoch{'' if cfg.epochs == 1 else 's'}; "
                             "nothing to resume")
        if dist.is_main:  # metrics.jsonl continues from the checkpoint: no duplicate or lost epochs.
            run.write_metrics(trainer.state.rows)     # and diagnostics.jsonl from its step
            trim(run.diagnostics_path, trainer.state.epoch * steps + trainer.state.step)
    elif dist.is_main:
        run.write_config(run_config(trainer, data, channels_last, spec.origin, supplied))
    trainer.writer = tensorboard_writer(run.path, cfg.tensorboard)
    if cfg.diagnostics and dist.is_main:
        trainer.diagnostics = Diagnostics(bare_model, cfg.diagnostics, run.diagnostics_path, trainer.writer)
    if not cfg.quiet:
        trainer.announce(data, resume)
    return trainer


# ---------------------------------------------------------------- the epoch loop

def run_epoch(trainer: Trainer, epoch: int) -> None:
    """One epoch: train, score val and test, append metrics, save last.pt (and best.pt / model.safetensors)."""
    state = trainer.state
    lr = trainer.optimizer.param_groups[0]["lr"] if state.step == 0 else state.partial.get("lr", 0.0)
    state.partial["lr"] = lr
    start = time.perf_counter() - state.partial["earlier_s"]
    train_loss, train_acc, seen, train_seconds, warmup = train_epoch(trainer, epoch)
    final = epoch == trainer.cfg.epochs
    if final and trainer.lookahead is not None:   # the final weights are the slow ones: part of training
        finish = time.perf_counter()
        trainer.lookahead.finish()
        train_seconds += time.perf_counter() - finish
    every = trainer.cfg.eval_every
    scored = final or (every > 0 and epoch % every == 0)
    # shifted test-time views cost 2x more passes: only the final evaluation uses them
    shift = trainer.cfg.tta_shift if final else 0

    def score(loader, bins=0):
        if loader is None or not scored:
            return None
        return evaluate(trainer.bare_model, loader, trainer.precision, trainer.cfg.tta, shift, trainer.dist,
                        bins=bins)
    # the final model's test ECE costs a softmax and 15 bin sums per batch: summary.json shows it for every run
    val_start = time.perf_counter()
    val = score(trainer.val_loader)
    test_start = time.perf_counter()
    test = score(trainer.test_loader, ECE_BINS if final else 0)
    end = time.perf_counter()
    if final:   # the evaluation that gives the result: test's, or val's where the test split is never scored
        state.final_eval_time = end - (test_start if trainer.test_loader is not None else val_start)
    epoch_seconds = end - start + (state.data_init_time if epoch == 1 else 0.0)   # the whole first epoch
    train_seconds -= warmup
    row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
           "val_loss": val.loss if val else None, "val_acc": val.accuracy if val else None,
           "test_loss": test.loss if test else None, "test_acc": test.accuracy if test else None,
           "test_ece": test.ece if test else None,
           "epoch_time_s": epoch_seconds, "train_only_time_s": train_seconds, "images_per_s": seen / train_seconds}
    state.rows.append(row)
    state.train_and_eval_time += epoch_seconds
    state.train_phase += train_seconds
    state.compile_warmup += warmup
    state.images += seen
    state.epoch, state.step = epoch, 0
    state.partial = RunState().partial
    if trainer.dist.is_main:
        trainer.run.append_metrics(row)
    trainer.progress.end_epoch(row)
    log_tensorboard(trainer.writer, row)
    if trainer.on_epoch is not None:
        trainer.on_epoch(row)
    # best.pt is chosen by val accuracy when there is a val split (among the epochs scored), else it is the last.
    improved = trainer.val_loader is None or (
        val is not None and (state.best is None or val.accuracy > state.best["val_acc"]))
    if not improved:
        trainer.save(LAST)
        return
    state.best = {"epoch": epoch, "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
    trainer.save(LAST, BEST)
    if trainer.dist.is_main:
        trainer.run.save_weights(trainer.bare_model.state_dict())


def train_epoch(trainer: Trainer, epoch: int) -> tuple[float, float, int, float, float]:
    """Train epoch `epoch` (1-based) from trainer.state.step; returns (loss, accuracy %, images, seconds, and
    the compile warm-up within those seconds)."""
    cfg, device, state, loader = trainer.cfg, trainer.device, trainer.state, trainer.train_loader
    trainer.model.train()
    loss_sum = torch.tensor(state.partial["loss_sum"], device=device)
    correct = torch.tensor(state.partial["correct"], device=device, dtype=torch.long)
    seen, start = state.partial["seen"], time.perf_counter() - state.partial["earlier_s"]
    warmup = CompileWarmUp(trainer)
    bad = torch.zeros((), device=device, dtype=torch.bool)
    check_every = CHECK_EVERY_CPU if device.type == "cpu" else CHECK_EVERY_ACCELERATOR
    last_save = time.monotonic()
    loader.set_position(epoch - 1, state.step)
    trainer.progress.start_epoch(epoch, len(loader), state.step)
    for x, y in loader:
        step = state.step + 1
        if trainer.diagnostics is not None:   # hooks on a recorded step's eager forward only
            trainer.diagnostics.start((epoch - 1) * len(loader) + step, epoch, not hasattr(trainer.model, "_orig_mod"))
        out, loss, stepped = warmup.step(x, y)
        if trainer.diagnostics is not None:
            trainer.diagnostics.finish(stepped)
        if stepped:   # False: --on-nan skip-step dropped a non-finite loss
            # Accumulate on the device: no .item() (a host sync) inside the step.
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bad |= ~torch.isfinite(loss.detach())
        if trainer.lookahead is not None:   # skipped batches count too: the syncs stay on their schedule
            trainer.lookahead.step((epoch - 1) * len(loader) + step)
        signum = trainer.stop.signum
        due = bool(cfg.checkpoint_every) and time.monotonic() - last_save >= cfg.checkpoint_every * 60
        if step % check_every == 0 or (not trainer.dist.enabled and (due or signum is not None)):
            signum, due, went_bad = trainer.dist.agree(signum, due, bad)
            if went_bad:
                raise trainer.diverged(f"at epoch {epoch}, step {step}"
                                       + (f" or the {check_every - 1} before it" if check_every > 1 else ""))
        else:     # under torchrun, every rank decides at the same steps only
            signum, due = None, False
        state.step = step
        trainer.progress.step(loss if trainer.progress.tty and step % 25 == 0 else None)
        if signum is not None or due:
            trainer.save_mid_epoch(loss_sum, correct, seen, start, warmup)
            last_save = time.monotonic()
            if signum is not None:
                raise trainer.interrupted(signum, epoch, step)
    if trainer.dist.agree(None, False, bad)[2]:    # reads `bad` back: the device has finished the epoch's steps
        raise trainer.diverged(f"in the last steps of epoch {epoch}")
    seconds = time.perf_counter() - start          # so on a GPU this counts the work queued, not just launched
    total_loss, total_correct, total_seen = global_sums(trainer.dist, loss_sum, correct, seen)
    return (total_loss / max(total_seen, 1), 100.0 * total_correct / max(total_seen, 1), int(total_seen), seconds,
            warmup.excess(seconds, state.step))


# ---------------------------------------------------------------- the summary

def summarize(trainer: Trainer) -> dict:
    """summary.json (on rank 0); returns the summary, with "run_dir" on rank 0 only."""
    cfg, state, rows = trainer.cfg, trainer.state, trainer.state.rows
    final = rows[-1]
    best_test = max((r for r in rows if r["test_acc"] is not None), key=lambda r: r["test_acc"],
                    default={"test_acc": None, "epoch": None})     # --no-test: never scored
    with_val = [r for r in rows if r["val_acc"] is not None]
    best_val = max(with_val, key=lambda r: r["val_acc"]) if with_val else None
    summary = {
        "model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "params": trainer.params,
        "epochs": cfg.epochs, "final_train_acc": final["train_acc"], "final_test_acc": final["test_acc"],
        "final_val_acc": final["val_acc"],
        "best_test_acc": best_test["test_acc"], "best_test_epoch": best_test["epoch"],
        "best_val_acc": best_val["val_acc"] if best_val else None,
        "best_val_epoch": best_val["epoch"] if best_val else None,
        "test_acc_at_best_val": best_val["test_acc"] if best_val else None,
        "overfit_gap": None if final["test_acc"] is None else final["train_acc"] - final["test_acc"],
        "train_and_eval_time_s": state.train_and_eval_time, "train_only_time_s": state.train_phase,
        "time_to_result_s": state.data_init_time + state.train_phase + state.final_eval_time,
        "time_scope": TIME_SCOPE, "data_init_time_s": state.data_init_time,
        "final_eval_time_s": state.final_eval_time, "compile_warmup_s": state.compile_warmup,
        "load_time_s": trainer.load_time,
        "images_per_s": state.images / max(state.train_phase, 1e-9),
        "device": str(trainer.device), "precision": trainer.precision.name, "seed": cfg.seed,
        "final_train_loss": final["train_loss"], "final_test_loss": final["test_loss"],
        "final_test_ece": final.get("test_ece"),     # in %, 15 bins (training/calibration.py)
        "world_size": trainer.dist.world,
    }
    if not trainer.dist.is_main:
        return summary
    trainer.run.write_summary(summary)
    return {**summary, "run_dir": str(trainer.run.path)}


# ---------------------------------------------------------------- helpers, in the order they are called

def make_run(cfg: TrainConfig, resume: bool = False) -> RunFolder:
    if resume:
        return RunFolder.reopen(cfg.out)
    return RunFolder.create(cfg.out, cfg.overwrite, f"{_short(cfg.model)}-{_short(cfg.dataset)}")


def _short(name: str) -> str:
    """A folder-name-safe part of a model or dataset name (mynet:TinyNet -> TinyNet, folder:/x/pets -> pets)."""
    tail = name.replace("\\", "/").rstrip("/").split("/")[-1].split(":")[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in tail) or "run"


def build_run_model(cfg: TrainConfig, data: Data, device: torch.device, channels_last: bool, resume: bool,
                    supplied=None) -> tuple[torch.nn.Module, object, float]:
    """The model on `device`, initialised from cfg.seed; a new run also loads pretrained weights and runs
    the data-dependent init. Returns (model, its spec, seconds the data-dependent init took)."""
    torch.manual_seed(cfg.seed)
    info = data.info
    spec = model_spec(cfg.model, supplied)
    model = build_model(cfg.model, info.num_classes, info.channels, info.size, batchnorm=cfg.batchnorm,
                        init=cfg.init, dropout=cfg.dropout, skip=cfg.skip, model_args=cfg.model_args,
                        supplied=supplied, dataset=cfg.dataset).to(device)
    if spec.pretrained is not None and not resume:
        spec.pretrained(model, cfg.download)
    init_time = 0.0
    if spec.data_init and not resume:
        start = time.perf_counter()
        sample = data.train.images[:DATA_INIT_IMAGES].float().div_(255)
        model.init_from_data(normalize(sample, torch.tensor(info.mean), torch.tensor(info.std)))
        init_time = time.perf_counter() - start
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, spec, init_time


def run_config(trainer: Trainer, data: Data, channels_last: bool, model_origin: str, supplied=None) -> dict:
    """config.json: every setting, what auto resolved to, the model's size, the data's shape, and the run's
    fingerprint (what a study compares before it reuses or resumes the folder). A switch the model does not
    have (basic-cnn's batchnorm) is recorded as null."""
    info = data.info
    cfg = trainer.cfg
    return {**cfg.to_dict(),
            **recorded_switches(cfg.model, {name: getattr(cfg, name) for name in SWITCHES}, supplied),
            "fingerprint": fingerprint(cfg, supplied),
            "resolved": {"device": str(trainer.device), "precision": trainer.precision.name,
                         "channels_last": channels_last,
                         "cpu_malloc": cpu_memory.current() if trainer.device.type == "cpu" else None},
            "params": trainer.params, "train_size": len(data.train),
            "val_size_actual": len(data.val) if data.val else 0, "test_size": len(data.test),
            "classes": data.classes, "model_origin": model_origin,
            "data_info": {"name": info.name, "title": info.title, "num_classes": info.num_classes,
                          "channels": info.channels, "size": info.size, "mean": list(info.mean),
                          "std": list(info.std)},
            "versions": {"cifarlab": cifarlab_version, "torch": str(torch.__version__),
                         "python": platform.python_version()}}
