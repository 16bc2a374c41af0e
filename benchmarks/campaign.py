"""A campaign of long runs at the article's budgets, that survives interruptions and records its figures.

    nohup python benchmarks/campaign.py --out ~/campaign --data-dir ~/data > ~/campaign.log 2>&1 &
    python benchmarks/campaign.py --out ~/campaign --list            # what is finished, interrupted, to do

Each run is `cifarlab train ... --out OUT/NAME --checkpoint-every 5`, one after another, most valuable
first. Started again (after a reboot, a kill, the end of a session), the campaign skips the runs that
finished, resumes the interrupted ones from their last checkpoint (`cifarlab train --resume`) and starts
the rest. Ctrl-C or SIGTERM stops the run at hand (it saves first) and the campaign with it.

When every seed of an entry has finished, its figure is appended once to BENCHMARKS.md (`--benchmarks`):
the command, the machine (CPU model and whether it runs bf16 natively, or the GPU), the date, the test
accuracy (mean ± std over seeds), the training time, and the article's figure for the same budget.
Runs of several hours halve the speed of everything else on the machine: start it when the CPU is not
needed for tests, or leave a core free with OMP_NUM_THREADS=1 (recorded with the figure). Keep OUT outside
the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cifarlab.run import atomic_write_text
from cifarlab.study.reproduce import ARTICLE_RUNS

HERE = Path(__file__).resolve().parent
ARTICLE = {run.key: run for run in ARTICLE_RUNS}
HEADING = "## Campaign figures (appended by benchmarks/campaign.py)"
TABLE_HEAD = ("| date | entry | command | machine | test accuracy | training time | article |\n"
              "|---|---|---|---|---|---|---|\n")


@dataclass(frozen=True)
class Entry:
    """A named training, run once per seed, and the article run it is measured against (if any)."""
    name: str
    args: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    article: str | None = None

    def folder(self, seed: int) -> str:
        return self.name if len(self.seeds) == 1 else f"{self.name}-seed{seed}"


def _train(model: str, dataset: str, recipe: str, *extra: str) -> tuple[str, ...]:
    return ("--model", model, "--dataset", dataset, "--recipe", recipe, *extra)


# Most valuable first: the headline claim (a better deeper CNN at the article's 15 epochs), its article
# baseline, fast94's mean, then ResNet-18, then CIFAR-100.
ENTRIES = [
    Entry("tuned-deeper-cnn-c10", _train("deeper-cnn", "cifar10", "tuned-deeper-cnn"), article="deeper-cnn-cifar10"),
    Entry("article-deeper-cnn-c10", _train("deeper-cnn", "cifar10", "article-deeper-cnn"),
          article="deeper-cnn-cifar10"),
    Entry("fast94", _train("fast94", "cifar10", "fast94"), seeds=(0, 1, 2)),
    Entry("tuned-resnet18-c10", _train("resnet18", "cifar10", "tuned-resnet18"), article="resnet18-cifar10"),
    Entry("article-resnet18-c10", _train("resnet18", "cifar10", "article-resnet18"), article="resnet18-cifar10"),
    Entry("tuned-deeper-cnn-c100", _train("deeper-cnn", "cifar100", "tuned-deeper-cnn-cifar100"),
          article="deeper-cnn-cifar100-35ep"),
    Entry("article-deeper-cnn-c100-35ep", _train("deeper-cnn", "cifar100", "article-deeper-cnn", "--epochs", "35"),
          article="deeper-cnn-cifar100-35ep"),
    Entry("tuned-resnet18-c100", _train("resnet18", "cifar100", "tuned-resnet18-cifar100"),
          article="resnet18-cifar100"),
    Entry("article-resnet18-c100", _train("resnet18", "cifar100", "article-resnet18", "--epochs", "25"),
          article="resnet18-cifar100"),
    # A cheap one, for trying the campaign itself (and for its test).
    Entry("article-basic-cnn-c10", _train("basic-cnn", "cifar10", "article-basic-cnn"), article="basic-cnn-cifar10"),
]
# Run only when --only names them: three 15-epoch seeds are 1.5 h on a 2-core AMX CPU in bf16, most of a day in
# fp32 on one without; the GPU proof's budgets part runs it.
NAMED_ONLY = [
    Entry("tuned-deeper-cnn-c10-3seeds", _train("deeper-cnn", "cifar10", "tuned-deeper-cnn"), seeds=(0, 1, 2),
          article="deeper-cnn-cifar10"),
]
ALL_ENTRIES = ENTRIES + NAMED_ONLY


def state(folder: Path) -> str:
    """finished (summary.json), interrupted (a checkpoint but no summary), or new."""
    if (folder / "summary.json").is_file():
        return "finished"
    if (folder / "checkpoints" / "last.pt").is_file():
        return "interrupted"
    return "new"


def command(entry: Entry, seed: int, out: Path, data_dir: str | None, extra: list[str]) -> list[str]:
    """The `cifarlab train` command for one seed: a resume where a checkpoint is waiting."""
    folder = out / entry.folder(seed)
    base = [sys.executable, "-m", "cifarlab", "train"]
    if state(folder) == "interrupted":
        return [*base, "--resume", str(folder), "--quiet"]
    data = ["--data-dir", data_dir] if data_dir else []
    return [*base, *entry.args, "--seed", str(seed), *data, *extra, "--checkpoint-every", "5",
            "--out", str(folder), "--quiet"]


def run_seed(entry: Entry, seed: int, out: Path, data_dir: str | None, extra: list[str]) -> int:
    """Start or resume one seed, its output appended to OUT/logs/FOLDER.log; returns its exit code."""
    cmd = command(entry, seed, out, data_dir, extra)
    log = out / "logs" / f"{entry.folder(seed)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"campaign: {'resume' if '--resume' in cmd else 'start'} {entry.folder(seed)}: "
          f"{shlex.join(cmd[1:])}", flush=True)
    with log.open("a") as sink:
        sink.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd[1:])}\n")
        sink.flush()
        return subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT).returncode


def machine(device: str = "auto") -> str:
    """The CPU model and whether it runs bf16 natively, or the GPU (device auto, where one is), for the figure's
    record."""
    import torch

    from cifarlab.training.device import cpu_supports_bf16

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines()
                      if line.partition(":")[0].strip() == "model name"), model)
    native = "native bf16" if cpu_supports_bf16() else "bf16 not native"     # as --precision auto decides
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"{model}, {os.cpu_count()} cores{f' ({threads} thread(s) used)' if threads else ''}, {native}"


def figure_row(entry: Entry, out: Path, extra: list[str]) -> str:
    """The BENCHMARKS.md table row of a finished entry: mean ± std over its seeds, beside the article."""
    summaries = [json.loads((out / entry.folder(s) / "summary.json").read_text()) for s in entry.seeds]
    accs = [s["final_test_acc"] for s in summaries]
    times = [s["train_and_eval_time_s"] for s in summaries]
    spread = f" ± {statistics.stdev(accs):.2f}% ({len(accs)} seeds)" if len(accs) > 1 else "% (1 seed)"
    article = ARTICLE.get(entry.article) if entry.article else None
    cited = (f"{article.test_acc:.2f}% in {article.epochs} epochs, {article.time_s:.0f} s (its hardware)"
             if article else "none")
    cmd = shlex.join(["cifarlab", "train", *entry.args, *extra, "--seed", "S" if len(accs) > 1 else "0"])
    return (f"| {time.strftime('%Y-%m-%d')} | {entry.name} | `{cmd}` | {machine()} | "
            f"{statistics.mean(accs):.2f}{spread} | {statistics.mean(times):,.0f} s per run | {cited} |\n")


def record(entry: Entry, out: Path, extra: list[str], benchmarks: Path) -> bool:
    """Append the entry's figure to `benchmarks` once (OUT/recorded.json remembers); True if appended now."""
    ledger = out / "recorded.json"
    done = json.loads(ledger.read_text()) if ledger.is_file() else []
    if entry.name in done:
        return False
    text = benchmarks.read_text() if benchmarks.is_file() else ""
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{TABLE_HEAD}"
    atomic_write_text(benchmarks, text + figure_row(entry, out, extra))
    atomic_write_text(ledger, json.dumps([*done, entry.name]) + "\n")
    return True


def run_campaign(entries: list[Entry], out: Path, data_dir: str | None, extra: list[str], benchmarks: Path) -> int:
    """Every seed of every entry in order; returns 0, or the exit code of a run stopped by a signal."""
    for entry in entries:
        for seed in entry.seeds:
            folder = out / entry.folder(seed)
            if state(folder) == "finished":
                continue
            code = run_seed(entry, seed, out, data_dir, extra)
            if code in (130, 143):        # Ctrl-C / SIGTERM: the run saved; stop here, resume next time
                print(f"campaign: stopped during {folder.name}; start the same command again to resume",
                      flush=True)
                return code
            if code != 0:
                print(f"campaign: {folder.name} failed (exit {code}); see {out / 'logs' / (folder.name + '.log')}",
                      flush=True)
        if all(state(out / entry.folder(s)) == "finished" for s in entry.seeds):
            if record(entry, out, extra, benchmarks):
                print(f"campaign: {entry.name} recorded in {benchmarks}", flush=True)
    return 0


def listing(entries: list[Entry], out: Path) -> str:
    lines = []
    for entry in entries:
        for seed in entry.seeds:
            folder = out / entry.folder(seed)
            now = state(folder)
            if now == "finished":
                s = json.loads((folder / "summary.json").read_text())
                now += f": {s['final_test_acc']:.2f}% in {s['train_and_eval_time_s']:,.0f} s"
            elif now == "interrupted" and (folder / "metrics.jsonl").is_file():
                now += f" after epoch {len((folder / 'metrics.jsonl').read_text().splitlines())}"
            lines.append(f"{entry.folder(seed):32} {now}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="campaign.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="the campaign's folder (outside the repository)")
    parser.add_argument("--data-dir", help="dataset root (default: cifarlab's, $CIFARLAB_DATA)")
    parser.add_argument("--only", help="comma list of entry names (default: all but tuned-deeper-cnn-c10-3seeds, "
                        "which runs only when named; in the order given)")
    parser.add_argument("--extra", action="append", default=[], metavar="FLAG",
                        help="one more `cifarlab train` flag for every run, e.g. --extra=--limit-train=2000 "
                        "(recorded in the figure's command)")
    parser.add_argument("--benchmarks", type=Path, default=HERE.parent / "BENCHMARKS.md",
                        help="where finished figures are appended (default: the repository's BENCHMARKS.md)")
    parser.add_argument("--list", action="store_true", help="print each run's state and exit")
    args = parser.parse_args(argv)
    names = {e.name for e in ALL_ENTRIES}
    wanted = [n for n in (args.only or "").split(",") if n]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown entry {unknown[0]!r} (choose from {', '.join(e.name for e in ALL_ENTRIES)})")
    by_name = {e.name: e for e in ALL_ENTRIES}
    entries = [by_name[n] for n in dict.fromkeys(wanted)] if wanted else ENTRIES     # --only's order
    if args.list:
        print(listing(entries, args.out))
        return 0
    extra = [part for flag in args.extra for part in flag.split("=", 1)]
    return run_campaign(entries, args.out, args.data_dir, extra, args.benchmarks)


if __name__ == "__main__":
    sys.exit(main())
