"""The report of `cifarlab depth` (study/depth.py): He et al.'s Fig. 6 drawn from our runs, the final errors by
depth and kind with their spread, the degradation verdicts, and the paper's test errors beside ours.

Everything is read from depth.json's content (the study's result), so a study can be drawn again without
its runs. Training error is 100 - the run's train accuracy: the running accuracy over each epoch's
augmented mini-batches in training mode, as He et al.'s training error is too.
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.report.document import Report, markdown_table, text_table
from cifarlab.report.stats import plural, plus_minus
from cifarlab.storage import atomic_write_json, atomic_write_text

PAPER = "He, Zhang, Ren and Sun, Deep Residual Learning for Image Recognition (2015)"
ARTICLE_WORDS = ("depth gives \"diminishing returns ... unless the architecture supports it (e.g. residual "
                 "connections)\"")
PAPER_PLAIN = "figure only (Fig. 6)"
KIND_TITLES = {"plain": "Plain nets (no shortcuts)", "resnet": "Residual nets (ResNet)"}


def error_cell(net: dict, what: str) -> str:
    """'22.31 ± 1.20 [19.10, 25.52]': mean ± std over seeds and the 95% interval of the mean."""
    interval = net[f"final_{what}_error_ci95"]
    if len(net[f"final_{what}_error_per_seed"]) == 1:
        return f"{net[f'final_{what}_error_mean']:.2f} (1 seed)"       # one value has no spread to show
    text = plus_minus(net, f"final_{what}_error")
    return text if interval is None else f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]"


def table(result: dict) -> tuple[list[str], list[list]]:
    """One row per net, plain nets first: its errors at the end of training, and the paper's test error."""
    headers = ["net", "params", "train error % (mean ± std [95% CI])", "test error % (mean ± std [95% CI])",
               "paper test error %"]
    rows = [[n["net"], f"{n['params']:,}", error_cell(n, "train"), error_cell(n, "test"), paper_cell(result, n)]
            for kind in ("plain", "resnet") for n in result["nets"] if n["kind"] == kind]
    return headers, rows


def paper_cell(result: dict, net: dict) -> str:
    if result["dataset"] != "cifar10":
        return "- (the paper's are CIFAR-10's)"
    if net["kind"] == "plain":
        return PAPER_PLAIN
    return "-" if net["paper_test_error"] is None else f"{net['paper_test_error']:.2f}"


def paper_table(result: dict) -> tuple[list[str], list[list]]:
    """Our mean test error beside the paper's, by depth."""
    by = {(n["kind"], n["depth"]): n for n in result["nets"]}
    headers = ["depth", "plain: ours", "plain: paper", "residual: ours", "residual: paper"]
    rows = [[d, f"{by['plain', d]['final_test_error_mean']:.2f}", paper_cell(result, by["plain", d]),
             f"{by['resnet', d]['final_test_error_mean']:.2f}", paper_cell(result, by["resnet", d])]
            for d in result["depths"]]
    return headers, rows


def head(result: dict) -> str:
    recipe = f"recipe {result['recipe']}" if result["recipe"] else "no recipe (the defaults)"
    return (f"Depth study: {result['family']} at depths {', '.join(map(str, result['depths']))}, plain and "
            f"residual, on {result['dataset']}, {recipe}, {plural(result['epochs'], 'epoch')}, "
            f"{plural(result['seeds'], 'seed')}" + (f", {result['limit_train']:,} train images"
                                                    if result["limit_train"] else ""))


def text_report(result: dict) -> str:
    """What `cifarlab depth` prints: the table, the budget against the paper's, the two verdicts."""
    headers, rows = table(result)
    return "\n".join([head(result), "", text_table(headers, rows), result["budget"]["text"],
                      *result["findings"]]) + "\n"


def figure6(result: dict):
    """He et al.'s Fig. 6 from our runs: training error dashed, test error solid, against epochs; plain nets on
    the left, residual on the right, one colour per depth; each curve the mean over seeds."""
    from cifarlab.report.plots import MaxNLocator, plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, kind in zip(axes, ("plain", "resnet")):
        for i, depth in enumerate(result["depths"]):
            net = next(n for n in result["nets"] if n["kind"] == kind and n["depth"] == depth)
            for key, style in (("train_error", "--"), ("test_error", "-")):
                points = [(r["epoch"], r[key]) for r in net["curve"] if r[key] is not None]
                ax.plot(*zip(*points), ls=style, marker="o", ms=3, color=f"C{i % 10}",
                        label=f"{net['net']}" if key == "test_error" else None)
        ax.set(xlabel="epoch", title=KIND_TITLES[kind])
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"{result['dataset']}: dashed = training error, solid = test error; mean over "
                 f"{plural(result['seeds'], 'seed')}; {budget_words(result['budget'])}", fontsize=10)
    return fig


def budget_words(budget: dict) -> str:
    """'3,510 iterations of batch 128 (the paper: 64,000)', short enough for a figure's title."""
    paper = f"the paper: {budget['paper']['iterations']:,}"
    if "iterations" not in budget:
        return f"{plural(budget.get('epochs', 0), 'epoch')} ({paper} iterations)"
    return f"{budget['iterations']:,} iterations of batch {budget['batch_size']} ({paper})"


def markdown(result: dict) -> str:
    """depth.md: the table, the budget, the verdicts and the paper's test errors beside ours."""
    headers, rows = table(result)
    paper_headers, paper_rows = paper_table(result)
    return "\n".join([head(result), "", markdown_table(headers, rows),
                      *(f"- {line}" for line in [result["budget"]["text"], *result["findings"]]), "",
                      "Beside the paper (test error %):", "", markdown_table(paper_headers, paper_rows),
                      paper_note(result)]) + "\n"


def paper_note(result: dict) -> str:
    return (f"The paper ({PAPER}) gives the residual nets' CIFAR-10 test errors in its Table 6 (ResNet-110: the "
            "best of 5 runs, mean 6.61 ± 0.16); for the plain nets it gives only Fig. 6, no numbers. "
            + result["budget"]["text"])


def write_outputs(base: Path, result: dict) -> None:
    """depth.json, depth.md, depth.png (the figure) and report.html / report.md in `base`."""
    from cifarlab.report.plots import save

    base = Path(base)
    atomic_write_json(base / "depth.json", dict(result))
    atomic_write_text(base / "depth.md", markdown(result))
    picture = save(figure6(result), base / "depth.png")
    headers, rows = table(result)
    paper_headers, paper_rows = paper_table(result)
    report = Report(f"Depth study: {result['family']} at depths {', '.join(map(str, result['depths']))}, plain and "
                    f"residual, on {result['dataset']}")
    report.section("Question").text(
        f"The article says {ARTICLE_WORDS}. That is He et al.'s degradation result: on CIFAR-10 a plain 56-layer "
        "net ends with a higher training error than a plain 20-layer net, while residual nets improve with depth. "
        "Here each depth is trained as a plain net (the shortcuts removed) and as a residual net, with the same "
        "recipe and seeds.")
    report.section("Figure 6, from our runs").image(
        picture, "Training error (dashed) and test error (solid) per epoch, mean over seeds; plain nets left, "
        "residual right, one colour per depth. Training error is the running error over each epoch's augmented "
        "mini-batches in training mode, as in the paper.")
    report.section("Final errors").table(headers, rows).text(result["budget"]["text"])
    report.section("Degradation").text(" ".join(result["findings"]))
    report.section("Beside the paper").table(paper_headers, paper_rows).text(paper_note(result))
    report.write(base)
