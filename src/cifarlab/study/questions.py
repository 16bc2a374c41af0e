"""`cifarlab reproduce`'s section "What the article could not tell": each open sentence of the article, quoted,
beside a measured answer at the study's budget.

- Skip connections: ResNet-18 with and without its shortcuts (--no-skip: the same layers, no identity or
  projection paths) on CIFAR-10 and CIFAR-100, paired over seeds, with the 95% interval of the difference.
- Gradient flow: the deeper CNN with and without BatchNorm, ResNet-18 with and without skips, trained with
  --diagnostics: the first layer's gradient norm over the last layer's, early and late, and the figure of
  gradient norm against depth.
- Depth: He et al.'s degradation experiment (study/depth.py), given as a finished study folder or run here.

Seed 0 of each "with" arm is the article's own run in the study (its settings, its folder), so the section adds
the other arm and the further seeds only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.document import Report, text_table
from cifarlab.report.stats import confidence_interval, interval_text, mean_std, plural
from cifarlab.runfolder import RunFolder
from cifarlab.settings import TrainConfig
from cifarlab.study.ablate import verdict
from cifarlab.study.runs import SEQUENTIAL, Launch, run_groups

QUESTION_SEEDS = 2
DEPTH_DEPTHS = (20, 32, 44, 56)


@dataclass(frozen=True)
class Questions:
    """What `reproduce` answers: seeds per arm (0: not at all), a finished depth study to show, or run one."""
    seeds: int = QUESTION_SEEDS
    depth_study: str | None = None
    with_depth: bool = False

    def check(self) -> "Questions":
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 0:
            raise UsageError(f"--question-seeds must be an integer >= 0, got {self.seeds!r}")
        if self.depth_study and self.with_depth:
            raise UsageError("--depth-study DIR and --with-depth both given: show a finished study or run one, "
                             "not both")
        if self.depth_study:
            load_depth(self.depth_study)
        return self
# about this many gradient records per run, whatever its length (a record every N steps, N at most 50)
RECORDS_PER_RUN = 20
FOLDER = "questions"


@dataclass(frozen=True)
class Pair:
    """One question: the article run whose settings both arms share, and the switch the other arm turns off."""
    key: str
    base: str            # an article run's key in reproduce.ARTICLE_RUNS
    switch: str          # the TrainConfig field set to False in the other arm
    quote: str           # the article's words
    question: str


PAIRS = (
    Pair("skip-cifar10", "resnet18-cifar10", "skip",
         "Both models perform well on the simpler 10-class problem, with only a 2.39% increase from skip "
         "connections. We can't really tell whether skip connections provided the benefit or just better weight "
         "flow.",
         "ResNet-18 on CIFAR-10 with and without its shortcuts (same layers, same BatchNorm)"),
    Pair("skip-cifar100", "resnet18-cifar100", "skip",
         "We already saw that the previous Deeper CNN couldn't handle the complex gradient flow. ResNet [...] used "
         "its identity mappings to deliver a substantially better result.",
         "ResNet-18 on CIFAR-100 with and without its shortcuts"),
    Pair("batchnorm-deeper-cnn", "deeper-cnn-cifar10", "batchnorm",
         "There may even be vanishing-gradient issues, though those are more prominent with sigmoid/tanh "
         "activations.",
         "the deeper CNN on CIFAR-10 with and without BatchNorm"),
)
GRADIENT_PAIRS = ("batchnorm-deeper-cnn", "skip-cifar10")
DEPTH_QUOTE = ("Diminishing returns from depth. Adding depth past a certain point doesn't yield better performance, "
               "unless the architecture supports it (e.g. residual connections).")
ARM_NAMES = {True: "with", False: "without"}


def diagnostics_every(cfg: TrainConfig, train_images: int = 50_000) -> int:
    """A gradient record every N steps: about RECORDS_PER_RUN of them in the run, N at most 50."""
    steps = cfg.epochs * max(1, math.ceil((cfg.limit_train or train_images) / cfg.batch_size))
    return max(1, min(50, steps // RECORDS_PER_RUN))


def with_diagnostics(cfg: TrainConfig, train_images: int | None) -> TrainConfig:
    """An article run of a question, recording its gradients (which changes none of its numbers). train_images:
    the dataset's count where the run takes all of it (None: a full CIFAR train split)."""
    return dataclasses.replace(cfg, diagnostics=diagnostics_every(cfg, train_images or 50_000))


def question_bases() -> set[str]:
    """The article runs whose settings the questions share."""
    return {pair.base for pair in PAIRS}


def question_configs(base: dict[str, TrainConfig], out: Path, seeds: int) -> dict[str, dict[str, list[TrainConfig]]]:
    """pair key -> {"with": a config per seed, "without": ...}. base: the article runs' configs by key (already
    recording diagnostics); seed 0 "with" is that config itself."""
    plans = {}
    for pair in PAIRS:
        cfg = base[pair.base]
        arms = {}
        for on in (True, False):
            arm = ARM_NAMES[on]
            arms[arm] = [cfg if on and i == 0 else dataclasses.replace(
                cfg, seed=cfg.seed + i, **({} if on else {pair.switch: False}),
                out=str(out / FOLDER / f"{pair.base}-{'' if on else 'no-' + pair.switch + '-'}seed-{cfg.seed + i}"))
                for i in range(seeds)]
        plans[pair.key] = arms
    return plans


def answer_questions(options: Questions, base: dict[str, TrainConfig], done: dict[str, RunFolder], out: Path,
                     launch: Launch, depth_cfg: TrainConfig | None) -> dict:
    """Train what the questions need beyond the article runs (`done`: by folder), then answer them: the skip and
    BatchNorm pairs, their gradient flow, and the depth study (loaded, or run from depth_cfg)."""
    result = {"answers": [], "gradients": [], "depth": None}
    if options.seeds:
        arms = train_questions(question_configs(base, out, options.seeds), done, launch)
        pairs = {p.key: p for p in PAIRS}
        result["answers"] = [skip_answer(pairs[key], arms[key]) for key in arms]
        result["gradients"] = [gradient_answer(pairs[key], arms[key]) for key in GRADIENT_PAIRS]
    if options.depth_study:
        result["depth"] = load_depth(options.depth_study)
    elif options.with_depth and depth_cfg is not None:
        from cifarlab.study.depth import depth_study

        result["depth"] = dict(depth_study(depth_cfg, "resnet-cifar", list(DEPTH_DEPTHS), max(2, options.seeds),
                                           launch))
    return result


def train_questions(plans: dict, done: dict[str, RunFolder], launch: Launch = SEQUENTIAL) -> dict:
    """Train every config of `plans` that is not an article run already in `done` (key: its folder)."""
    groups = {f"{key} {arm}": [c for c in group if c.out not in done]
              for key, arms in plans.items() for arm, group in arms.items()}
    trained = run_groups({name: group for name, group in groups.items() if group}, launch, command="reproduce")
    runs = dict(done)
    for name, group in trained.items():
        runs.update({c.out: r for c, r in zip(groups[name], group)})
    return {key: {arm: [runs[c.out] for c in group] for arm, group in arms.items()} for key, arms in plans.items()}


# ---------------------------------------------------------------- the answers

def skip_answer(pair: Pair, arms: dict[str, list[RunFolder]]) -> dict:
    """Final test (and train) accuracy of each arm over seeds, the paired difference without - with, its 95%
    interval and the verdict, said only where the interval excludes 0."""
    answer = {"key": pair.key, "question": pair.question, "quote": pair.quote, "switch": pair.switch}
    for arm, runs in arms.items():
        for what in ("train", "test"):
            values = [float(r.summary[f"final_{what}_acc"]) for r in runs]
            answer[f"{arm}_{what}_acc_per_seed"] = values
            answer[f"{arm}_{what}_acc_mean"], answer[f"{arm}_{what}_acc_std"] = mean_std(values)
        answer[f"{arm}_runs"] = [str(r.path) for r in runs]
    diffs = [b - a for a, b in zip(answer["with_test_acc_per_seed"], answer["without_test_acc_per_seed"])]
    answer["difference_mean"] = sum(diffs) / len(diffs)
    answer["difference_ci95"] = confidence_interval(diffs)
    answer["verdict"] = verdict(answer["difference_ci95"])
    first = arms["with"][0]
    answer["budget"] = budget_text(first)
    switch, them = ("shortcuts", "them") if pair.switch == "skip" else ("BatchNorm", "it")
    answer["text"] = (f"Without its {switch}: test accuracy {answer['without_test_acc_mean']:.2f}% vs "
                      f"{answer['with_test_acc_mean']:.2f}% with {them}, change {answer['difference_mean']:+.2f} pt, "
                      f"{interval_text(answer['difference_ci95'], signed=True)} (paired over "
                      f"{plural(len(diffs), 'seed')}); {verdict(answer['difference_ci95'])}. {answer['budget']}.")
    return answer


def budget_text(run: RunFolder) -> str:
    config = run.config
    images = config.get("train_size")
    return f"Budget: {plural(config['epochs'], 'epoch')}" + (f" x {images:,} train images" if images else "")


def gradient_answer(pair: Pair, arms: dict[str, list[RunFolder]]) -> dict | None:
    """First layer's gradient norm / last layer's per arm, early and late, mean ± std over seeds; None where a
    run recorded no gradients (a run reused from before --diagnostics)."""
    from cifarlab.report.gradients import load_flows

    runs = [r for group in arms.values() for r in group]
    if not all(r.diagnostics_path.is_file() and r.diagnostics_rows() for r in runs):
        return None
    flows = load_flows(runs)
    answer = {"key": pair.key, "question": pair.question, "arms": {}}
    i = 0
    for arm, group in arms.items():
        members, i = flows[i:i + len(group)], i + len(group)
        cell = {"label": members[0].label}
        for when in ("early", "late"):
            values = [f.ratio(when)[1] for f in members if f.ratio(when)[1] is not None]
            cell[f"{when}_per_seed"] = values
            cell[f"{when}_mean"], cell[f"{when}_std"] = mean_std(values) if values else (None, None)
        answer["arms"][arm] = cell
    answer["flows"] = flows
    return answer


def ratio_text(cell: dict, when: str) -> str:
    """'0.25 ± 0.07 (2 seeds)', '0.25 (1 seed)', 'n/a'."""
    mean, std, n = cell[f"{when}_mean"], cell[f"{when}_std"], len(cell[f"{when}_per_seed"])
    if mean is None:
        return "n/a"
    return f"{mean:.3g} (1 seed)" if n == 1 else f"{mean:.3g} \u00b1 {std:.2g} ({plural(n, 'seed')})"


def accuracy_text(answer: dict, arm: str, what: str) -> str:
    values = answer[f"{arm}_{what}_acc_per_seed"]
    mean, std = answer[f"{arm}_{what}_acc_mean"], answer[f"{arm}_{what}_acc_std"]
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} \u00b1 {std:.2f}"


def load_depth(folder: str | Path) -> dict:
    """A finished depth study's depth.json (`cifarlab depth --out DIR`), refused in one line where there is none."""
    path = Path(folder) / "depth.json"
    if not path.is_file():
        raise UsageError(f"--depth-study {folder}: no depth.json there; run `cifarlab depth --out {folder}` first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the report

def questions_section(report: Report, answers: list[dict], gradients: list[dict], depth: dict | None,
                      figures: Path) -> None:
    """The section: each quote, the measured answer, its budget; the gradient figure; the depth verdicts."""
    from cifarlab.report.plots import save

    section = report.section("What the article could not tell")
    section.text("The article's own sentences (quoted), each beside what cifarlab measured at this study's budget. "
                 "Differences are paired over seeds with their 95% interval; a verdict is said only where the "
                 "interval excludes 0.")
    for answer in answers:
        section.text(f"> \u201c{answer['quote']}\u201d").text(f"**{answer['question']}.** {answer['text']}")
        section.pre(text_table(["arm", "train %", "test %", "seeds"], [
            [arm, accuracy_text(answer, arm, "train"), accuracy_text(answer, arm, "test"),
             str(len(answer[f"{arm}_test_acc_per_seed"]))] for arm in ("with", "without")]))
    if answers:         # --question-seeds 0 trains no pair, so there is no gradient flow to show
        gradients_block(section, gradients, figures, save)
    if depth is not None:
        depth_block(section, depth, figures, save)


def gradients_block(section, gradients: list[dict], figures: Path, save) -> None:
    from cifarlab.report.gradients import depth_figure

    measured = [g for g in gradients if g is not None]
    if not measured:
        section.text("Gradient flow: not measured (the runs were trained before --diagnostics recorded gradients).")
        return
    section.text("> \u201cThere may even be vanishing-gradient issues\u201d \u2014 the first layer's gradient norm "
                 "over the last layer's (on the main path: a shortcut's projection is not a layer of the plain "
                 "twin), early (the first recorded step: the network as initialised) and late (the last), mean "
                 "\u00b1 std over seeds. Below 1 the first layers get less gradient; orders of magnitude below is the "
                 "vanishing-gradient picture.")
    rows = [[g["arms"][arm]["label"], ratio_text(g["arms"][arm], "early"), ratio_text(g["arms"][arm], "late")]
            for g in measured for arm in ("with", "without")]
    section.pre(text_table(["configuration", "first / last early", "first / last late"], rows))
    for g in measured:
        path = save(depth_figure(g["flows"]), figures / f"gradients-{g['key']}.png")
        section.image(path, f"Gradient norm against layer depth: {g['question']}")


def depth_block(section, depth: dict, figures: Path, save) -> None:
    from cifarlab.report.depth import figure6

    section.text(f"> \u201c{DEPTH_QUOTE}\u201d").text(
        "He et al.'s degradation experiment: plain and residual nets of growing depth. " + " ".join(depth["findings"])
        + f" {depth['budget']['text']}")
    section.image(save(figure6(depth), figures / "depth-figure6.png"),
                  "He et al.'s Fig. 6 from our runs: training error dashed, test error solid; plain left, residual right")


def summary_lines(answers: list[dict], gradients: list[dict], depth: dict | None) -> list[str]:
    """What the command prints of the section: a line per answer."""
    out = [f"{a['question']}: {a['text']}" for a in answers]
    for g in gradients:
        if g is not None:
            out.append(f"gradient flow, {g['question']}: first/last layer gradient norm, late: " + "; ".join(
                f"{g['arms'][arm]['label']} {ratio_text(g['arms'][arm], 'late')}" for arm in ("with", "without")))
    if depth is not None:
        out += depth["findings"]
    return out
