"""Run: what a user does with a run folder (evaluate, predict, export, plot, resume), the face of `RunFolder`.

`cifarlab.load_run(path)` opens one and `cifarlab.train(...)` returns one. It sits at the top, above
evaluate/predict/export, report/ and study/, which it calls; nothing below imports it: they read and write
the folder through `cifarlab.runfolder.RunFolder`.
"""

from __future__ import annotations

from pathlib import Path

# The run folder and the storage layer, re-exported: scripts and notebooks import these from here.
from cifarlab.runfolder import (BEST, CHECKPOINTS, CONFIG, EXPORT_FORMATS, LAST, METRICS, STUDY_LOG,  # noqa: F401
                                SUMMARY, SUMMARY_TEXT, WEIGHTS, RunFolder, open_run)
from cifarlab.storage import (LOCK, atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401
                              load_checkpoint, load_weights, lock_folder,
                              release_folders, replace_folder, save_checkpoint, strip_prefixes)
from cifarlab.errors import UsageError


class Run(RunFolder):
    """A run folder. `cifarlab.load_run(path)` opens one; `cifarlab.train(...)` returns one.

    model: the class, factory or module a run was trained with when Python cannot import it
    again (a class defined in a notebook is recorded as `__main__:Name`).
    """

    def metrics_frame(self):
        """The metrics as a pandas DataFrame, one row per epoch (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("metrics_frame() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.metrics)

    # ---- what a user does with a run
    def evaluate(self, split: str = "test", tta: str | None = None, data_dir: str | None = None,
                 device: str = "auto", out: str | Path | None = None, dataset: str | None = None):
        """Accuracy, per-class accuracy, confusion matrix, ECE on test (or val); tta: None, "flip", "flip-shift".
        dataset="cifar10.1": a CIFAR-10 run on CIFAR-10.1, and the drop from CIFAR-10 test with its interval."""
        if dataset is not None:
            from cifarlab.shift import evaluate_shift

            if split != "test":   # a test set of its own: the split asked for would be dropped without a word
                raise UsageError(f"evaluate: dataset={dataset!r} is a test set; leave out split={split!r}")

            return evaluate_shift(self, dataset, tta, data_dir, out, device)
        from cifarlab.evaluate import evaluate_run

        return evaluate_run(self, split, tta, data_dir, out, device)

    def evaluate_corruptions(self, corruptions="all", severities=None, limit: int | None = None,
                             corruptions_dir: str | Path | None = None, seed: int | None = None, **options):
        """Accuracy on CIFAR-10-C-style corrupted copies of the test split (or the official files in
        corruptions_dir): str() is the table, plot() accuracy against severity; written to the run folder.
        seed: of the generated corruptions (default 0); refused with corruptions_dir, whose files are made."""
        from cifarlab.robustness import evaluate_corruptions

        if corruptions_dir is not None and seed is not None:
            raise UsageError("evaluate_corruptions: seed= seeds the corruptions generated here; the files in "
                             "corruptions_dir are already corrupted, so leave it out")
        return evaluate_corruptions(self, corruptions, severities, limit, corruptions_dir, seed or 0, **options)

    def calibrate(self, data_dir: str | None = None, device: str = "auto", out: str | Path | None = None):
        """NLL, Brier, ECE on test before and after a temperature fitted on val, stored in temperature.json."""
        from cifarlab.calibrate import calibrate_run

        return calibrate_run(self, data_dir, out, device)

    def predict(self, images, top_k: int = 5, calibrated: bool = False) -> list[dict]:
        """Top-k labels for image files, PIL images or uint8 arrays (HWC, or NHWC / NCHW batches); calibrated:
        probabilities after the stored temperature."""
        from cifarlab.predict import predict

        return predict(self, images, top_k, calibrated=calibrated)

    def export(self, fmt: str, out: str | Path | None = None, calibrated: bool = False):
        """Write the model as onnx, torchscript or safetensors; returns what was written and checked."""
        from cifarlab.export import export_run

        return export_run(self, fmt, out, calibrated=calibrated)

    def diagnostics(self) -> list[dict]:
        """The rows --diagnostics N recorded (diagnostics.jsonl), a dict per layer per recorded step: step, epoch,
        layer, kind, depth, grad_norm, weight_norm, update_ratio, act_mean, act_std, relu_zero. A list, as
        `metrics` is: pandas.DataFrame(run.diagnostics()) makes a frame of it."""
        return self.diagnostics_rows()

    def plot(self, kind: str = "curves"):
        """A matplotlib Figure (shown inline in Jupyter): "curves", loss and accuracy per epoch; "gradients", the
        gradient flow --diagnostics recorded (log10 gradient norm per layer and step, and against depth)."""
        if kind == "gradients":
            from cifarlab.report.gradients import run_gradients_figure

            return run_gradients_figure(self)
        if kind != "curves":
            raise UsageError(f"plot: unknown kind {kind!r} (choose curves or gradients)")
        from cifarlab.report.plots import run_figure

        return run_figure(self.name, self.metrics)

    def resume(self, **changes) -> "Run":
        """Continue an interrupted run exactly where it stopped (changes: data_dir, device, quiet, ...)."""
        return resume(self, **changes)     # the module's function below, which api.resume is

    def __repr__(self) -> str:
        if self.finished:
            s = self.summary
            split = "test" if s.get("final_test_acc") is not None else "val"
            score = "not scored" if s.get(f"final_{split}_acc") is None else f"{s[f'final_{split}_acc']:.2f}%"
            return (f"Run('{self.path}': {s['model']} on {s['dataset']}, {s['epochs']} "
                    f"epoch{'s' if s['epochs'] != 1 else ''}, final {split} {score})")
        return f"Run('{self.path}', not finished)"


def as_run(folder: RunFolder) -> Run:
    """The user's `Run` for a folder the layers below hand back (they know only `RunFolder`)."""
    return folder if isinstance(folder, Run) else Run(folder.path, folder.supplied_model)


def load_run(path: str | Path, model=None) -> Run:
    """Open a run folder (finished or not); `model` supplies a class Python cannot import again."""
    return open_run(path, model, Run)


def resume(run: Run | str | Path, model=None, **changes) -> Run:
    """Continue a stopped run exactly where it stopped; only data_dir, device, quiet, download,
    checkpoint_every, tensorboard and diagnostics may change."""
    from cifarlab.fingerprint import check_same_data
    from cifarlab.study.runs import train_run
    from cifarlab.validation import resume_config

    run = run if isinstance(run, RunFolder) else load_run(run, model)
    supplied = model if model is not None else run.supplied_model
    cfg = resume_config(run.config, changes, str(run.path), supplied)
    check_same_data(cfg, run.config)
    train_run(cfg, resume=True, model=supplied)
    return load_run(run.path, supplied)
