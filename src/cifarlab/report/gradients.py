"""`cifarlab diagnose`: the gradient flow that --diagnostics N recorded (RUN/diagnostics.jsonl), drawn and put
into numbers.

- a heat map per run: log10 of each layer's gradient norm (rows, first layer on top) against the step;
- gradient norm against layer depth at three moments (the first recorded step, the first after epoch 1, the
  last), every run overlaid, one colour per configuration: do the first layers get orders of magnitude less
  gradient than the last?
- the ratio of the first layer's gradient norm to the last layer's, early (the first recorded step) and late
  (the last), per run, and mean ± std over the seeds of one configuration (runs whose recorded fingerprint is
  equal but for the seed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab.errors import UsageError
from cifarlab.report.document import Report, text_table
from cifarlab.report.plots import MaxNLocator, plt, save, shown
from cifarlab.report.stats import mean_std
from cifarlab.runfolder import DIAGNOSE, RunFolder, open_run

SWITCH_LABELS = (("batchnorm", "no BatchNorm"), ("skip", "no skips"), ("dropout", "no dropout"))


# ---------------------------------------------------------------- the numbers

def by_step(rows: list[dict]) -> dict[int, list[dict]]:
    """step -> its rows in depth order (a shortcut's projection beside the layer before it)."""
    steps: dict[int, list[dict]] = {}
    for row in rows:
        steps.setdefault(row["step"], []).append(row)
    return {s: sorted(r, key=lambda row: row["depth"]) for s, r in sorted(steps.items())}


def moments(rows: list[dict]) -> dict[str, int]:
    """The steps the depth figure shows: the first recorded, the first after epoch 1 (else epoch 1's last), the
    last. Equal steps are shown once."""
    steps = by_step(rows)
    first, last = min(steps), max(steps)
    later = [s for s, r in steps.items() if r[0]["epoch"] >= 2]
    after_one = min(later) if later else max(s for s, r in steps.items() if r[0]["epoch"] == 1)
    chosen: dict[str, int] = {}
    for label, step in (("first step", first), ("after epoch 1", after_one), ("end", last)):
        if step not in chosen.values():
            chosen[label] = step
    return chosen


def main_path(layers: list[dict]) -> list[dict]:
    """A step's layers without residual shortcuts' projections: the layers a plain twin has too (rows written
    before the `shortcut` column are told by their module path)."""
    return [r for r in layers
            if not r.get("shortcut", any(p in ("downsample", "shortcut") for p in r["layer"].split(".")))]


def first_last_ratio(layers: list[dict]) -> float | None:
    """One step's first layer's gradient norm over its last layer's (on the main path)."""
    layers = main_path(layers)
    first, last = layers[0]["grad_norm"], layers[-1]["grad_norm"]
    return first / last if first is not None and last else None


@dataclass
class RunFlow:
    """One run's gradient flow: its label (its configuration), rows and first/last ratios."""

    run: RunFolder
    label: str
    group: str
    rows: list[dict]
    name: str = ""        # the run's folder, relative to the folder above all the runs shown (seed-0, bn/seed-0)

    @property
    def steps(self) -> dict[int, list[dict]]:
        return by_step(self.rows)

    def ratio(self, when: str) -> tuple[int, float | None]:
        """(step, first/last ratio) early (the first recorded step) or late (the last)."""
        steps = self.steps
        step = min(steps) if when == "early" else max(steps)
        return step, first_last_ratio(steps[step])


def load_flows(paths: list) -> list[RunFlow]:
    """Each run's rows (a run without diagnostics.jsonl is refused in one line), labelled by configuration."""
    runs = [p if isinstance(p, RunFolder) else open_run(p) for p in paths]
    flows = [RunFlow(run, configuration_label(run.config), _group_key(run.config), run.diagnostics_rows())
             for run in runs]
    top = os.path.commonpath([str(f.run.path.resolve().parent) for f in flows])
    for flow in flows:
        flow.name = os.path.relpath(flow.run.path.resolve(), top)
        if not flow.rows:
            raise UsageError(f"{flow.run.path}: diagnostics.jsonl holds no rows yet (fewer steps than --diagnostics)")
    labels: dict[str, str] = {}
    for flow in flows:   # two configurations that read alike get their run folder's name too
        if labels.setdefault(flow.label, flow.group) != flow.group:
            flow.label = f"{flow.label} ({flow.name})"
    return flows


def configuration_label(config: dict) -> str:
    """'deeper-cnn on cifar10, no BatchNorm': the model, the data and the switches turned off."""
    off = [text for name, text in SWITCH_LABELS if config.get(name) is False]
    return f"{config.get('model')} on {config.get('dataset')}" + "".join(f", {t}" for t in off)


def _group_key(config: dict) -> str:
    """Runs of one configuration: equal fingerprints but for the seed (the whole config where none is recorded)."""
    recorded = config.get("fingerprint") or {k: v for k, v in config.items() if k not in ("out", "fingerprint")}
    return repr(sorted((k, repr(v)) for k, v in recorded.items() if k != "seed"))


# ---------------------------------------------------------------- the figures

def heatmap_figure(flow: RunFlow, ax=None):
    """log10 gradient norm, layers (first on top) x recorded steps."""
    steps = flow.steps
    layers = [r["layer"] for r in next(iter(steps.values()))]
    grid = [[math.log10(r["grad_norm"]) if r["grad_norm"] else float("nan") for r in rows] for rows in steps.values()]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.3 * len(layers)))
    image = ax.imshow(list(map(list, zip(*grid))), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ticks = list(range(0, len(steps), max(1, len(steps) // 8)))
    ax.set_xticks(ticks, [list(steps)[i] for i in ticks])
    ax.set(xlabel="step", title=f"{flow.label}: log10 gradient norm")
    ax.figure.colorbar(image, ax=ax, label="log10 ||grad||")
    return fig if fig is not None else ax.figure


def depth_figure(flows: list[RunFlow]):
    """Gradient norm against layer depth at the first step, after epoch 1 and at the end; runs overlaid."""
    names = list(moments(flows[0].rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), sharey=True, squeeze=False)
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(f.group for f in flows))}
    for flow in flows:
        shown_steps = moments(flow.rows)
        for ax, name in zip(axes[0], names):
            layers = main_path(flow.steps[shown_steps.get(name, max(flow.steps))])
            labelled = flow is next(f for f in flows if f.group == flow.group)
            ax.plot(range(len(layers)), [r["grad_norm"] for r in layers], marker="o", ms=3,
                    color=colours[flow.group], alpha=0.8, label=flow.label if labelled else None)
    for ax, name in zip(axes[0], names):
        steps = {moments(f.rows).get(name) for f in flows}
        ax.set(yscale="log", xlabel="layer depth on the main path (0 = first)",
               title=f"{name} (step {steps.pop()})" if len(steps) == 1 else name)
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("gradient norm (log scale)")
    axes[0][-1].legend(fontsize=7)
    return fig


def run_gradients_figure(run: RunFolder):
    """One run's figure: heat map on top, gradient norm against depth below."""
    flow = load_flows([run])[0]
    names = list(moments(flow.rows))
    fig = plt.figure(figsize=(4.2 * len(names), 7.5))
    grid = fig.add_gridspec(2, len(names))
    heatmap_figure(flow, fig.add_subplot(grid[0, :]))
    for i, (name, step) in enumerate(moments(flow.rows).items()):
        ax = fig.add_subplot(grid[1, i])
        layers = flow.steps[step]
        ax.plot([r["depth"] for r in layers], [r["grad_norm"] for r in layers], marker="o", ms=3)
        ax.set(yscale="log", xlabel="layer depth on the main path (0 = first)", title=f"{name} (step {step})")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return shown(fig)


# ---------------------------------------------------------------- the command

@dataclass
class Diagnosis:
    """What `cifarlab diagnose` found: per run and per configuration, the first/last gradient-norm ratios, and
    where the figures and the report went. str() is what the command prints."""

    flows: list[RunFlow]
    folder: Path
    figures: list[Path] = field(default_factory=list)

    def run_rows(self) -> list[list]:
        rows = []
        for flow in self.flows:
            (s0, early), (s1, late) = flow.ratio("early"), flow.ratio("late")
            rows.append([flow.name, flow.label, f"{_ratio(early)} (step {s0})", f"{_ratio(late)} (step {s1})"])
        return rows

    def group_rows(self) -> list[list]:
        """Mean ± std over the seeds of each configuration run more than once."""
        rows = []
        for group in dict.fromkeys(f.group for f in self.flows):
            members = [f for f in self.flows if f.group == group]
            if len(members) < 2:
                continue
            cells = [f"{members[0].label} ({len(members)} seeds)"]
            for when in ("early", "late"):
                values = [f.ratio(when)[1] for f in members if f.ratio(when)[1] is not None]
                mean, std = mean_std(values) if values else (float("nan"), 0.0)
                cells.append(f"{_ratio(mean)} ± {_ratio(std)}")
            rows.append(cells)
        return rows

    def __str__(self) -> str:
        out = ["Gradient flow: the first layer's gradient norm / the last layer's (below 1: the first layers get "
               "less gradient)", text_table(["run", "configuration", "early", "late"], self.run_rows())]
        if self.group_rows():
            out += ["Over seeds (mean ± std):", text_table(["configuration", "early", "late"], self.group_rows())]
        return "\n".join(out) + "\n"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3g}"


def diagnose(runs: list, out: str | Path | None = None) -> Diagnosis:
    """Draw the gradient flow of `runs` (run folders trained with --diagnostics N) into `out` (default:
    RUN/diagnose for one run, else diagnose/ beside the runs): heat maps, depth.png, report.md, report.html."""
    if not runs:
        raise UsageError("diagnose needs at least one run folder")
    flows = load_flows(list(runs))
    if out is None:
        parents = [str(f.run.path.resolve().parent) for f in flows]
        out = flows[0].run.path / DIAGNOSE if len(flows) == 1 else Path(os.path.commonpath(parents)) / DIAGNOSE
    folder = Path(out)
    result = Diagnosis(flows, folder)
    result.figures.append(save(depth_figure(flows), folder / "depth.png"))
    for i, flow in enumerate(flows):
        name = flow.name.replace(os.sep, "-")
        result.figures.append(save(heatmap_figure(flow), folder / f"heatmap-{i + 1}-{name}.png"))
    _report(result).write(folder)
    return result


def _report(result: Diagnosis) -> Report:
    report = Report("Gradient flow")
    ratios = report.section("First layer's gradient norm / last layer's")
    ratios.text('The article, on its deeper CNN: "there may even be vanishing-gradient issues". Measured here: ')
    ratios.text("Early is the first recorded step (the network as initialised), late the last. Below 1, the first "
                "layers get less gradient than the last: orders of magnitude below is the vanishing-gradient picture.")
    ratios.table(["run", "configuration", "early", "late"], result.run_rows())
    if result.group_rows():
        ratios.text("Over seeds, mean ± std:")
        ratios.table(["configuration", "early", "late"], result.group_rows())
    report.section("Gradient norm against depth").image(result.figures[0], "first step, after epoch 1, end")
    maps = report.section("Heat maps: log10 gradient norm, layers x steps")
    for flow, path in zip(result.flows, result.figures[1:]):
        maps.image(path, f"{flow.name}: {flow.label}")
    return report
