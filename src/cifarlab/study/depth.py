"""cifarlab depth: He et al.'s (2015) degradation experiment, the plain and the residual net at each depth.

The article says depth gives "diminishing returns ... unless the architecture supports it (e.g. residual
connections)". He et al. (Deep Residual Learning, Fig. 6) showed it on CIFAR-10: a plain 56-layer net ends
with a *higher training error* than a plain 20-layer one, while the residual nets improve with depth. This
trains both kinds (skip=False, skip=True) at each depth over seeds, through the same machinery as every study
(finished runs reused, stopped ones resumed, --jobs, Ray), and answers the question for each kind: the
deepest net's final training error minus the shallowest's, paired over seeds, with its 95% interval; a verdict
only where that interval excludes 0.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.stats import confidence_interval, interval_text, mean_rows, mean_std, plural
from cifarlab.settings import TrainConfig
from cifarlab.study.runs import SEQUENTIAL, Launch, default_out, run_groups
from cifarlab.validation import validate

DEFAULT_RECIPE = "he2015-cifar"
DEFAULT_DEPTHS = (20, 32, 44, 56)
# family -> (its models' names by depth, the module that builds them); the CIFAR ResNets of He et al.
# section 4.2 have 6n+2 layers
FAMILIES = {"resnet-cifar": ("resnet{depth}", "cifarlab.models.resnet_cifar")}
# (folder prefix, the skip switch): plain first, as in the paper's figure (plain left, residual right)
KINDS = (("plain", False), ("resnet", True))
# He et al. Table 6, CIFAR-10 test error (%) of their residual nets (ResNet-110: the best of 5 runs, whose
# mean was 6.61 +- 0.16). For the plain nets the paper gives only Fig. 6, no table.
PAPER_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
# He et al.: 64k iterations of batch 128 on 45k training images (5k held out for validation).
PAPER_BUDGET = (64_000, 128, 45_000)
# What the paper saw when the deepest net is compared with the shallowest: plain nets train worse, residual better.
PAPER_SIGN = {"plain": +1, "resnet": -1}


def family_depths(family: str) -> list[int]:
    """The depths of the family's registered models: resnet{d} built in models/resnet_cifar.py (resnet50, the
    ImageNet bottleneck net, is 6n+2 too but no member)."""
    from cifarlab.models import MODELS

    name, module = FAMILIES[family]
    prefix = name.split("{")[0]
    return sorted(int(n[len(prefix):]) for n, spec in MODELS.items()
                  if n.startswith(prefix) and n[len(prefix):].isdigit()
                  and getattr(spec.build, "__module__", None) == module)


def parse_depths(family: str, depths) -> list[int]:
    """'20,56' (or a list of ints) -> [20, 56], each a registered 6n+2 depth of the family; refused in one line."""
    if family not in FAMILIES:
        raise UsageError(f"unknown family '{family}' for depth (choose from {', '.join(FAMILIES)})")
    parts = [p.strip() for p in depths.split(",") if p.strip()] if isinstance(depths, str) else list(depths)
    known, out = family_depths(family), []
    listed = ", ".join(map(str, known))
    for part in parts:
        try:
            depth = int(part)
        except (TypeError, ValueError):
            raise UsageError(f"--depths takes whole numbers such as 20,56, got '{part}'") from None
        if depth < 8 or (depth - 2) % 6:
            raise UsageError(f"depth {depth} is not of the form 6n+2: the {family} nets have {listed} layers")
        if depth not in known:
            raise UsageError(f"no {family} net of depth {depth} is registered (its depths: {listed})")
        if depth in out:
            raise UsageError(f"depth {depth} given twice in --depths")
        out.append(depth)
    if len(out) < 2:
        raise UsageError(f"--depths needs two depths or more to compare, got {', '.join(map(str, out)) or 'none'}")
    return sorted(out)


def depth_settings(family: str, depths, settings: dict) -> tuple[list[int], dict]:
    """The depths, and the settings of the study's first net: depth chooses the models and the skip switch
    itself, so a model or a skip setting given is refused in one line (it would silently be replaced)."""
    if settings.get("model") is not None:
        raise UsageError(f"depth chooses the nets from --family and --depths; --model {settings['model']} has no "
                         "place here: leave it out")
    if settings.get("skip") is not None:
        raise UsageError("depth trains every depth both with and without skips; --skip/--no-skip has no place here: "
                         "leave it out")
    parsed = parse_depths(family, depths)
    return parsed, {**settings, "model": FAMILIES[family][0].format(depth=parsed[0]), "skip": None}


def fit_validation(cfg: TrainConfig, given: bool, note=None) -> TrainConfig:
    """The recipe's validation split where it fits the data; where it would take half the train images or more
    (he2015-cifar's 5,000 on the 200 images of the sample, or on cifar-mini's 5,000), a tenth of them instead, said
    in a note. A --val-size the user gave is kept as given (and refused in one line where it cannot work)."""
    if given or not cfg.val_size:
        return cfg
    from cifarlab.data.sources import load_dataset

    images = len(load_dataset(cfg.dataset, cfg.data_dir, download_missing=cfg.download).train)
    if cfg.val_size < images // 2:
        return cfg
    fitted = dataclasses.replace(cfg, val_size=images // 10)
    if note is not None:
        note(f"cifarlab: note: recipe {cfg.recipe} holds out {cfg.val_size:,} images for validation and "
             f"{cfg.dataset} here has {images:,} train images: holding out {fitted.val_size:,} (a tenth) instead; "
             "--val-size N chooses")
    return fitted


def check_base(cfg: TrainConfig) -> None:
    """What depth refuses before training: a run that never scores test (the paper's numbers are test errors)."""
    if not cfg.test:
        raise UsageError("depth sets its test errors beside the paper's: --no-test leaves nothing to set; leave it out")


def net_configs(cfg: TrainConfig, family: str, depths: list[int], seeds: int, base: Path) -> dict:
    """'plain-20' -> its seeds' configs in OUT/plain-20/seed-S, 'resnet-20' -> ..., each validated (the
    registry says whether a model has the skip switch)."""
    groups = {}
    for depth in depths:
        for kind, skip in KINDS:
            net = dataclasses.replace(cfg, model=FAMILIES[family][0].format(depth=depth), skip=skip)
            validate(net)
            groups[f"{kind}-{depth}"] = [dataclasses.replace(net, seed=cfg.seed + i,
                                                             out=str(base / f"{kind}-{depth}" / f"seed-{cfg.seed + i}"))
                                         for i in range(seeds)]
    return groups


class DepthStudy(dict):
    """depth.json's content; str() is what `cifarlab depth` prints, plot() the paper's Fig. 6 from our runs,
    .runs every run (grouped by net: .nets())."""

    def __init__(self, result: dict, runs: list):
        super().__init__(result)
        self.runs = runs

    def __str__(self) -> str:
        from cifarlab.report.depth import text_report

        return text_report(self)

    def nets(self) -> dict[str, list]:
        """'plain-20' -> that net's runs, in seed order."""
        out: dict[str, list] = {}
        for run in self.runs:
            out.setdefault(Path(run.path).parent.name, []).append(run)
        return out

    def plot(self):
        from cifarlab.report.depth import figure6
        from cifarlab.report.plots import shown

        return shown(figure6(self))


def depth_study(cfg: TrainConfig, family: str, depths: list[int], seeds: int,
                launch: Launch = SEQUENTIAL) -> DepthStudy:
    """Train the plain and the residual net at each depth over `seeds` seeds into OUT/KIND-DEPTH/seed-S, then
    write depth.json, depth.md, depth.png and report.html (report.md) into OUT."""
    from cifarlab.report.depth import write_outputs

    check_base(cfg)
    base = Path(cfg.out) if cfg.out else default_out(f"depth-{family}-{cfg.dataset}")
    start = time.perf_counter()
    groups = net_configs(cfg, family, depths, seeds, base)
    results = run_groups(groups, launch, command="depth")
    result = DepthStudy(summarize(cfg, family, depths, seeds, results), [r for runs in results.values() for r in runs])
    result["wall_time_s"] = time.perf_counter() - start
    write_outputs(base, result)
    result["folder"] = str(base)
    return result


def summarize(cfg: TrainConfig, family: str, depths: list[int], seeds: int, results: dict) -> dict:
    """depth.json: per net its final errors (mean, std, 95% interval, per seed) and mean curves; per kind the
    degradation verdict; the budget beside the paper's."""
    nets = []
    for name, runs in results.items():
        kind, depth = name.split("-")
        row = {"net": name, "kind": kind, "depth": int(depth), "model": runs[0].config["model"],
               "skip": kind == "resnet", "params": runs[0].summary["params"],
               "seeds": [r.summary["seed"] for r in runs], "runs": [str(r.path) for r in runs],
               "paper_test_error": PAPER_TEST_ERROR.get(int(depth)) if kind == "resnet" else None}
        for what in ("train", "test"):
            errors = [100.0 - r.summary[f"final_{what}_acc"] for r in runs]
            row[f"final_{what}_error_mean"], row[f"final_{what}_error_std"] = mean_std(errors)
            row[f"final_{what}_error_ci95"] = confidence_interval(errors)
            row[f"final_{what}_error_per_seed"] = errors
        row["curve"] = error_curve(mean_rows([r.metrics for r in runs]))
        nets.append(row)
    first = next(iter(results.values()))[0].config
    result = {"family": family, "dataset": cfg.dataset, "recipe": cfg.recipe, "depths": depths, "seeds": seeds,
              "epochs": cfg.epochs, "limit_train": cfg.limit_train, "batch_size": cfg.batch_size,
              "train_images": first.get("train_size"), "nets": nets}
    result["budget"] = budget(cfg.epochs, first.get("train_size"), cfg.batch_size)
    result["verdicts"] = {kind: degradation(kind, *(_net(nets, kind, d) for d in (depths[0], depths[-1])))
                          for kind, _ in KINDS}
    result["findings"] = [v["text"] for v in result["verdicts"].values()]
    return result


def _net(nets: list[dict], kind: str, depth: int) -> dict:
    return next(n for n in nets if n["kind"] == kind and n["depth"] == depth)


def error_curve(rows: list[dict]) -> list[dict]:
    """Per-epoch training and test error (100 - accuracy); test is None where the epoch was not scored."""
    return [{"epoch": r["epoch"], "train_error": None if r["train_acc"] is None else 100.0 - r["train_acc"],
             "test_error": None if r["test_acc"] is None else 100.0 - r["test_acc"]} for r in rows]


def degradation(kind: str, shallow: dict, deep: dict) -> dict:
    """Does the deepest net of `kind` end with a higher training error than the shallowest? Paired over seeds
    (the same seed: the same val split and batch order), with the 95% interval of the difference; a verdict only
    where it excludes 0. shallow, deep: net rows with final_train_error_per_seed."""
    a, b = shallow["final_train_error_per_seed"], deep["final_train_error_per_seed"]
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    interval = confidence_interval(diffs)
    if interval is None:
        verdict = "no verdict from one seed"
    elif interval[0] > 0:
        verdict = "degradation: the deeper net trains worse"
    elif interval[1] < 0:
        verdict = "the deeper net trains better"
    else:
        verdict = "no clear effect at this budget"
    sign = 0 if interval is None or interval[0] <= 0 <= interval[1] else (1 if mean > 0 else -1)
    paper = ("as He et al. found" if sign == PAPER_SIGN[kind] else
             "unlike He et al., who found the opposite" if sign == -PAPER_SIGN[kind] else
             f"He et al. found the deeper {'plain' if kind == 'plain' else 'residual'} net trains "
             f"{'worse' if PAPER_SIGN[kind] > 0 else 'better'}")
    label = "Plain nets" if kind == "plain" else "Residual nets"
    spread = ("no interval" if interval is None else
              f"{interval_text(interval, signed=True)} (paired over {plural(len(diffs), 'seed')})")
    text = (f"{label}: final training error of {deep['net']} {mean_of(b):.2f}% vs {shallow['net']} "
            f"{mean_of(a):.2f}%, difference {mean:+.2f} pt, {spread}; {verdict} ({paper}).")
    return {"kind": kind, "shallow": shallow["net"], "deep": deep["net"], "difference_mean": mean,
            "difference_ci95": interval, "difference_per_seed": diffs, "verdict": verdict, "text": text}


def percent(share: float) -> str:
    """'12.50%', or two significant digits below 1% ('0.0016%'), where two decimals would say 0.00%."""
    return f"{share:.2%}" if share >= 0.01 else f"{100 * share:.2g}%"


def counted(n: int, noun: str) -> str:
    """'1 step', '3,510 steps'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values)


def budget(epochs: int, train_images: int | None, batch_size: int) -> dict:
    """Our iterations and images seen beside the paper's 64k iterations of batch 128 on 45k images."""
    iterations, paper_batch, paper_images = PAPER_BUDGET
    paper = {"iterations": iterations, "batch_size": paper_batch, "train_images": paper_images,
             "images_seen": iterations * paper_batch, "epochs": iterations * paper_batch / paper_images}
    if train_images is None:
        return {"epochs": epochs, "paper": paper, "text": f"Budget: {plural(epochs, 'epoch')}; the paper: "
                f"{iterations:,} iterations of batch {paper_batch} on {paper_images:,} images."}
    # the train loader drops the last partial batch when there is more than one batch (training/splits.py)
    steps = train_images // batch_size if train_images > batch_size else 1
    ours = {"epochs": epochs, "steps_per_epoch": steps, "iterations": epochs * steps, "batch_size": batch_size,
            "train_images": train_images, "images_seen": epochs * steps * min(batch_size, train_images)}
    share = ours["images_seen"] / paper["images_seen"]
    text = (f"Budget: {plural(epochs, 'epoch')} x {counted(steps, 'step')} = "
            f"{counted(ours['iterations'], 'iteration')} of batch {batch_size} on {train_images:,} train images "
            f"({ours['images_seen']:,} images seen); the paper: {iterations:,} iterations of batch {paper_batch} on {paper_images:,} images "
            f"({paper['images_seen']:,} seen, about {paper['epochs']:.0f} epochs): ours is {percent(share)} of it.")
    if share < 0.1:
        text += (" Below a tenth of the paper's budget: our errors stand far above its figures, and the verdicts "
                 "describe this budget only.")
    return {**ours, "paper": paper, "share": share, "text": text}
