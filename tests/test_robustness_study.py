"""`ablate --robustness`, `reproduce --robustness` and compare's robustness columns (study/robustness.py), on
the real CIFAR-10 sample with a CIFAR-10.1 copy written in the official layout."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cifarlab
from cifarlab.data import cifar101
from conftest import run_cli

T_975_DF1 = 12.7062047361747      # Student's t, 97.5% quantile, 1 degree of freedom (2 seeds; stats.py keeps 12.706)
LIMIT = 40


@pytest.fixture(scope="module")
def data(cifar_sample, tmp_path_factory):
    """The sample's CIFAR-10, and as CIFAR-10.1 its last 60 real test images in the release's layout."""
    root = tmp_path_factory.mktemp("robust-data")
    shutil.copytree(cifar_sample / "cifar-10-batches-py", root / "cifar-10-batches-py")
    from cifarlab.data.sources import load_dataset

    test = load_dataset("cifar10", root, download_missing=False).test
    (root / cifar101.FOLDER).mkdir()
    np.save(root / cifar101.FOLDER / cifar101.DATA_FILE, test.images[40:].permute(0, 2, 3, 1).numpy())
    np.save(root / cifar101.FOLDER / cifar101.LABELS_FILE, test.labels[40:].numpy().astype(np.int64))
    return root


PINNED_T = 1.5


@pytest.fixture(scope="module")
def ablation(data, tmp_path_factory):
    """A 1-epoch ablation; its temperature is pinned, since no temperature may fit so weak a model (that path has
    its own test below) and the calibrated path must be checked here."""
    out = tmp_path_factory.mktemp("robust-ablate") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cifarlab.calibrate.fit_temperature", lambda logits, labels: PINNED_T)
        return cifarlab.ablate("basic-cnn", "cifar10", without="augment", seeds=2, data_dir=str(data), epochs=1,
                               val_size=20, augment=["crop", "flip"], robustness=True, robustness_limit=LIMIT,
                               quiet=True, out=str(out))


def _record(folder):
    return json.loads((folder / "robustness.json").read_text())


def test_each_run_records_what_evaluate_measured(ablation):
    for variant in ("full", "no-augment"):
        for seed in (0, 1):
            folder = Path(ablation["folder"]) / variant / f"seed-{seed}"
            record = _record(folder)
            sets = json.loads((folder / "evaluation-corruptions" / "corruptions.json").read_text())
            per_set = [v for by in sets["accuracy"].values() for v in by.values()]
            assert len(per_set) == 75 and sets["images"] == LIMIT
            assert record["corruption_accuracy"] == pytest.approx(sum(per_set) / 75)
            assert record["corruption_gap"] == pytest.approx(sets["clean_accuracy"] - sum(per_set) / 75)
            assert record["val_images"] == 20 and record["temperature"] == PINNED_T
            shift = json.loads((folder / "evaluation-cifar10.1" / "shift.json").read_text())
            assert shift["cifar10.1"]["images"] == 60
            assert record["cifar101_accuracy"] == pytest.approx(shift["cifar10.1"]["accuracy"])
            calibration = json.loads((folder / "evaluation-calibration" / "calibration.json").read_text())
            assert record["ece"] == pytest.approx(calibration["test"]["before"]["ece"])
            assert record["ece_calibrated"] == pytest.approx(calibration["test"]["after"]["ece"])
            assert record["ece_calibrated"] != pytest.approx(record["ece"])          # T = 1.5 changed it
            assert calibration["val"]["before"]["images"] == 20


def test_changes_are_paired_over_seeds_with_their_t_interval(ablation):
    root = Path(ablation["folder"])
    rows = {r["group"]: r for r in ablation["robustness"]["rows"]}
    for key in ("corruption_accuracy", "corruption_gap", "ece", "ece_calibrated", "cifar101_accuracy"):
        diffs = [_record(root / "no-augment" / f"seed-{s}")[key] - _record(root / "full" / f"seed-{s}")[key]
                 for s in (0, 1)]
        mean = sum(diffs) / 2
        half = T_975_DF1 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)   # sd of 2 = |a-b|/sqrt(2)
        assert rows["no-augment"][f"{key}_change"] == pytest.approx(mean)
        assert rows["no-augment"][f"{key}_change_ci95"] == pytest.approx([mean - half, mean + half], abs=1e-3)
    text = str(ablation)
    assert "Beyond the test split (--robustness)" in text
    assert "Removing augment (paired over 2 seeds): mean corruption accuracy" in text
    change = rows["no-augment"]["corruption_accuracy_change"]
    assert f"({change:+.2f} pt, 95% CI" in text
    assert "CIFAR-10.1 accuracy" in text


def test_report_markdown_and_figure(ablation):
    root = Path(ablation["folder"])
    assert "## Beyond the test split" in (root / "ablation.md").read_text()
    assert "Beyond the test split" in (root / "report.html").read_text()
    assert (root / "robustness_bars.png").stat().st_size > 5000
    saved = json.loads((root / "ablation.json").read_text())
    assert saved["robustness"]["limit"] == LIMIT


def test_a_second_pass_reuses_the_records_and_new_weights_are_measured_again(ablation, data):
    from cifarlab.runfolder import open_run
    from cifarlab.storage import load_checkpoint, save_checkpoint
    from cifarlab.study.robustness import Robustness, measure

    folder = Path(ablation["folder"]) / "full" / "seed-0"
    before = (folder / "robustness.json").stat().st_mtime_ns
    again = cifarlab.ablate("basic-cnn", "cifar10", without="augment", seeds=2, data_dir=str(data), epochs=1,
                            val_size=20, augment=["crop", "flip"], robustness=True, robustness_limit=LIMIT,
                            quiet=True, out=ablation["folder"])
    assert (folder / "robustness.json").stat().st_mtime_ns == before
    assert again["robustness"]["rows"] == ablation["robustness"]["rows"]
    run = open_run(folder)
    weights = run.weights_to_load()
    state = load_checkpoint(weights)
    tensors = state["model"] if "model" in state else state
    name = next(k for k, v in tensors.items() if torch.is_floating_point(v))
    tensors[name] = tensors[name] + 0.05
    save_checkpoint(weights, state)
    old = _record(folder)
    new = measure(run, Robustness(True, LIMIT), progress=False)
    assert new["key"]["weights_sha256"] != old["key"]["weights_sha256"]
    assert _record(folder)["key"] == new["key"]


def test_compare_shows_the_robustness_columns(ablation):
    root = Path(ablation["folder"])
    a, b = root / "full" / "seed-0", root / "no-augment" / "seed-1"
    result = run_cli("compare", str(a), str(b))
    assert result.returncode == 0, result.stderr
    assert "corrupted % (images)" in result.stdout and "ECE after T %" in result.stdout
    for folder in (a, b):
        record = _record(folder)
        assert f"{record['corruption_accuracy']:.2f} ({LIMIT})" in result.stdout
        assert f"{record['ece_calibrated']:.2f}" in result.stdout
    figures = json.loads(run_cli("compare", str(a), str(b), "--json").stdout)
    assert [f["robustness"]["corruption_accuracy"] for f in figures] == [
        pytest.approx(_record(folder)["corruption_accuracy"]) for folder in (a, b)]


@pytest.mark.parametrize("args, message", [
    (["--augment", "crop,flip"], "--robustness fits a temperature on a val split (never on test), and these runs "
                                 "have none: pass --val-size N, e.g. 5000"),
    (["--val-size", "20", "--no-test"], "--robustness corrupts the test split and scores it: leave out --no-test"),
    (["--val-size", "20", "--robustness-limit", "0"], "--robustness-limit must be >= 1, got 0"),
])
def test_ablate_refuses_before_training(cifar_sample, tmp_path, args, message):
    out = tmp_path / "study"
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                     "--epochs", "1", "--without", "augment", "--augment", "crop,flip", "--robustness", *args,
                     "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: {message}"
    assert not out.exists()


def test_refusals_for_grey_images_and_a_limit_alone(tmp_path):
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", "mnist", "--data-dir", str(tmp_path),
                     "--val-size", "100", "--robustness", "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: --robustness: mnist has 1 channel(s); the corruptions are "
                                     "defined for colour images")
    result = run_cli("reproduce", "--sample", "--robustness-limit", "5", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: --robustness-limit sets how many test images each corrupted "
                                     "set holds: add --robustness")


def test_reproduce_adds_each_runs_robustness(data, tmp_path, monkeypatch):
    from cifarlab.study import reproduce as study

    monkeypatch.setattr(study, "ARTICLE_RUNS", study.ARTICLE_RUNS[:1])       # basic-cnn on CIFAR-10 alone
    out = tmp_path / "reproduce"
    result = cifarlab.reproduce(str(data), scale=0.2, out=str(out), question_seeds=0, robustness=True,
                                robustness_limit=30, quiet=True)
    config = json.loads((out / "basic-cnn-cifar10" / "config.json").read_text())
    assert config["val_size"] == 20                          # a tenth of the sample's 200 train images
    record = result["robustness"]["runs"]["basic-cnn-cifar10"]
    assert record == _record(out / "basic-cnn-cifar10")
    assert record["images_per_set"] == 30 and record["cifar101"]["images"] == 60
    text = str(result)
    assert "Beyond the test split (--robustness):" in text
    calibrated = "none fits" if record["temperature"] is None else f"{record['ece_calibrated']:.2f}"
    assert f"{record['corruption_accuracy']:.2f}" in text and f"{record['ece']:.2f}" in text and calibrated in text
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["robustness"]["runs"]["basic-cnn-cifar10"]["corruption_accuracy"] == record["corruption_accuracy"]
    assert "Beyond the test split" in (out / "report.html").read_text()
    assert (out / "figures" / "robustness.png").is_file()
    again = cifarlab.reproduce(str(data), scale=0.2, out=str(out), question_seeds=0, robustness=True,
                               robustness_limit=30, quiet=True)          # runs and records reused
    assert again["robustness"]["runs"] == result["robustness"]["runs"]


def test_a_run_no_temperature_fits_keeps_its_ece_and_says_why(data, tmp_path, monkeypatch):
    from cifarlab.study import robustness as beyond
    from cifarlab.training import calibration

    def beyond_the_edge(logits, labels):
        raise calibration.TemperatureBeyondRange("temperature scaling: the val NLL still falls past T = 20", 20.0)

    monkeypatch.setattr("cifarlab.calibrate.fit_temperature", beyond_the_edge)
    run = cifarlab.train("basic-cnn", "cifar10", data_dir=str(data), epochs=1, val_size=20, quiet=True,
                         out=str(tmp_path / "run"), limit_train=64)
    record = beyond.measure(run, beyond.Robustness(True, 20), progress=False)
    assert record["temperature"] is None and record["ece_calibrated"] is None
    assert record["no_temperature"] == "temperature scaling: the val NLL still falls past T = 20"
    assert record["ece"] == pytest.approx(run.summary["final_test_ece"], abs=1e-6)   # 1 epoch: best = final model
    assert not (run.path / "temperature.json").exists()
    from cifarlab.report.robustness import method_text, run_table

    headers, rows = run_table(["run"], [record])
    assert rows[0][headers.index("ECE after T %")] == "-" and rows[0][headers.index("T")] == "none fits"
    assert "No temperature fits 1 run" in method_text([record])
    assert beyond.metrics_of([record]) == [m for m in beyond.METRICS if m[0] != "ece_calibrated"]


def test_a_missing_temperature_pairs_the_seeds_that_have_one():
    from cifarlab.report.robustness import method_text
    from cifarlab.study.robustness import group_rows

    def record(seed, accuracy, ece_after):
        return {"seed": seed, "images_per_set": 100, "weights": "best.pt", "dataset": "cifar10",
                "clean_accuracy": accuracy + 5, "corruption_accuracy": accuracy, "corruption_gap": 5.0, "ece": 9.0,
                "ece_calibrated": ece_after, "temperature": None if ece_after is None else 1.5,
                "no_temperature_edge": 20 if ece_after is None else None, "cifar101_accuracy": None}

    groups = {"full": [record(0, 50, 3.0), record(1, 52, 4.0), record(2, 51, 5.0)],
              "no-augment": [record(0, 40, None), record(1, 43, 6.0), record(2, 41, 8.5)]}
    row = group_rows(groups, "full")[1]
    assert row["ece_calibrated_per_seed"] == [None, 6.0, 8.5]
    assert row["ece_calibrated_mean"] == pytest.approx(7.25)
    assert row["ece_calibrated_pairs"] == 2 and row["ece_calibrated_change"] == pytest.approx(2.75)
    assert row["corruption_accuracy_change"] == pytest.approx(-29 / 3)
    text = method_text(groups["full"] + groups["no-augment"])
    assert "No temperature fits 1 run (the val NLL still falls past T = 20: a model about as good as chance)" in text


def test_a_folder_dataset_of_other_sizes_is_refused_before_training(cifar10_sample, tmp_path):
    train, test = cifar10_sample.train, cifar10_sample.test
    big = lambda x: np.repeat(np.repeat(x.permute(0, 2, 3, 1).numpy(), 2, axis=1), 2, axis=2)     # noqa: E731
    np.savez(tmp_path / "big.npz", x_train=big(train.images[:50]), y_train=train.labels[:50].numpy(),
             x_test=big(test.images[:20]), y_test=test.labels[:20].numpy())
    out = tmp_path / "study"
    result = run_cli("ablate", "--model", "basic-cnn", "--dataset", f"npz:{tmp_path / 'big.npz'}", "--epochs", "1",
                     "--without", "augment", "--augment", "flip", "--val-size", "10", "--robustness",
                     "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: corruptions: the images are 64x64; the severity constants "
                                     "are CIFAR's, for 32x32 images")
    assert not out.exists()
