"""cifarlab evaluate RUN --calibration: how far the run's confidence can be trusted, and one temperature to fix it.

NLL, Brier score and ECE (15 bins, Guo et al. 2017; training/calibration.py) on the test split, before and after
temperature scaling. The temperature is fitted on the run's val split by minimising NLL, never on test: a run
without a val split (none from --val-size, nor an npz: / folder: dataset's own) is refused in one line. The
logits are the model's own, without test-time views: what `predict` and `export` compute, the two that use the
stored temperature (RUN/temperature.json, with the name and sha256 of the weights it was fitted on: both refuse it
with other weights).

Writes calibration.json, reliability.png and the logits (val_/test_ logits.npy and labels.npy) in
RUN/evaluation-calibration (or --out), and temperature.json in the run folder.
"""

from __future__ import annotations

from pathlib import Path

from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import UsageError
from cifarlab.evaluate import write_logits
from cifarlab.runfolder import TEMPERATURE, RunFolder, atomic_write_json, open_source, weights_identity
from cifarlab.training.calibration import ECE_BINS, calibration_figures, fit_temperature
from cifarlab.training.device import Precision, resolve_device, resolve_precision
from cifarlab.training.evaluation import evaluate
from cifarlab.training.splits import prepare_data

FIGURES = (("nll", "NLL", "{:.4f}"), ("brier", "Brier", "{:.4f}"), ("ece", "ECE", "{:.2f}%"),
           ("accuracy", "accuracy", "{:.2f}%"))


class Calibration(dict):
    """What `cifarlab evaluate --calibration` measured; str() is what it prints, plot() the reliability diagram."""

    def __str__(self) -> str:
        r = self
        lines = [f"{r['model']} on {r['dataset']}: temperature T = {r['temperature']:.4f}, fitted on the val split "
                 f"({r['val']['before']['images']:,} images) by minimising NLL; test ({r['test']['before']['images']:,}"
                 f" images) was not used to fit anything",
                 f"  {'':<16}{'before':>10}{'after':>10}"]
        for split in ("test", "val"):
            for key, name, form in FIGURES:
                if split == "val" and key != "nll":
                    continue
                before, after = form.format(r[split]["before"][key]), form.format(r[split]["after"][key])
                lines.append(f"  {split + ' ' + name:<16}{before:>10}{after:>10}")
        lines.append(f"ECE over {ECE_BINS} equal-width confidence bins (Guo et al. 2017); dividing the logits by one T "
                     "leaves every prediction, hence accuracy, unchanged")
        return "\n".join(lines) + "\n"

    def plot(self):
        """The reliability diagram (before | after) as a matplotlib Figure."""
        from cifarlab.report.calibration import reliability_figure

        return reliability_figure(self.panels(), self.title())

    def panels(self) -> list[tuple[str, dict]]:
        return [("test, before", self["test"]["before"]),
                (f"test, after T = {self['temperature']:.2f}", self["test"]["after"])]

    def title(self) -> str:
        return f"Reliability: {self['model']} on {self['dataset']} test"


def split_logits(run: RunFolder, weights: Path, data_dir: str | None, device: str):
    """(cfg, {"val": (logits, labels), "test": (logits, labels)}) of the run's model, without test-time views."""
    cfg = run.train_config()
    if data_dir is not None:
        cfg.data_dir = data_dir
    data = prepare_data(cfg)    # an npz: or folder: dataset may ship a val split of its own
    if data.val is None:
        raise UsageError(f"--calibration: {cfg.dataset} as this run was trained (without --val-size) has no val "
                         "split to fit the temperature on (never the test split); train it again with --val-size N, "
                         "e.g. 5000")
    dev = resolve_device(device)
    precision = Precision(resolve_precision("auto", dev))
    model = run.model(weights, device=dev)
    out = {}
    for name, split in (("val", data.val), ("test", data.test)):
        loader = DeviceLoader(split, 1000, data.info.mean, data.info.std, dev, channels_last=dev.type != "mps")
        out[name] = (evaluate(model, loader, precision, logits=True).logits, split.labels.cpu())
    return cfg, out


def calibrate_run(source: str | Path | RunFolder, data_dir: str | None = None, out: str | Path | None = None,
                  device: str = "auto", model=None) -> Calibration:
    """Fit T on val, measure test before and after, store T in RUN/temperature.json; returns the figures."""
    from cifarlab.report.calibration import reliability_diagram

    run, weights = open_source(source, model)
    cfg, logits = split_logits(run, weights, data_dir, device)
    fitted_on = weights_identity(weights)    # before anything is written: the bytes the logits came from
    temperature = fit_temperature(*logits["val"])
    result = Calibration({
        "source": str(run.path), "model": cfg.model, "dataset": cfg.dataset, "weights": weights.name,
        "temperature": temperature, "fitted_on": "val", "bins": ECE_BINS,
        **{name: {"before": calibration_figures(*pair), "after": calibration_figures(*pair, temperature)}
           for name, pair in logits.items()},
    })
    folder = Path(out) if out else run.path / "evaluation-calibration"
    atomic_write_json(folder / "calibration.json", dict(result))
    for name, (split_logits_, labels) in logits.items():
        write_logits(folder, split_logits_, labels, prefix=f"{name}_")
    reliability_diagram(result.panels(), folder / "reliability.png", result.title())
    atomic_write_json(run.path / TEMPERATURE, {
        "temperature": temperature, "fitted_on": "val", "val_images": result["val"]["before"]["images"],
        "val_nll_before": result["val"]["before"]["nll"], "val_nll_after": result["val"]["after"]["nll"],
        "weights": fitted_on,    # name and sha256: predict/export refuse the temperature with other weights
        "use": "divide the model's logits by temperature before the softmax"})
    result["folder"] = str(folder)
    return result
