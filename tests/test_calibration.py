"""Calibration on real runs: ECE recomputed here in numpy from the saved logits, temperature scaling fitted on val
(lower val NLL, the same predictions), the stored temperature used by predict and export, and the refusals."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

import cifarlab
from cifarlab.errors import UsageError
from cifarlab.training.calibration import fit_temperature


def numpy_softmax(logits):
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def numpy_ece(logits, labels, bins=15):
    """Guo et al.'s ECE, written out independently: bin m holds (m-1)/15 < confidence <= m/15."""
    probs = numpy_softmax(logits)
    confidence, guess = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.sum() / len(labels) * abs((guess[inside] == labels[inside]).mean() - confidence[inside].mean())
    return total


def numpy_nll(logits, labels, temperature=1.0):
    probs = numpy_softmax(logits.astype(np.float64) / temperature)   # float32 / float stays float32 in numpy 2
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


@pytest.fixture(scope="module")
def plain_run(cifar_sample, tmp_path_factory):
    """basic-cnn, 2 epochs on the shipped sample, no val split: its best.pt is its final model."""
    out = tmp_path_factory.mktemp("calibration") / "plain"
    return cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn", data_dir=str(cifar_sample), epochs=2,
                          quiet=True, out=str(out))


@pytest.fixture(scope="module")
def confident_run(cifar_mini, tmp_path_factory):
    """A real over-confident run: basic-cnn (the article's Adam recipe) fitted for 12 epochs to 1,000 cifar-mini
    images, with a 500-image val split to fit the temperature on (scored after the last epoch only)."""
    out = tmp_path_factory.mktemp("calibration") / "confident"
    return cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn", data_dir=str(cifar_mini), epochs=12,
                          val_size=500, limit_train=1000, eval_every=0, quiet=True, out=str(out))


@pytest.fixture(scope="module")
def calibrated(confident_run):
    return confident_run.calibrate()


def test_final_test_ece_in_summary_equals_numpy_ece_of_the_saved_test_logits(plain_run, cifar10_sample):
    evaluation = plain_run.evaluate()
    folder = plain_run.path / "evaluation-test"
    logits, labels = np.load(folder / "logits.npy"), np.load(folder / "labels.npy")
    assert logits.shape == (100, 10)
    assert np.array_equal(labels, cifar10_sample.test.labels.numpy())     # the split's own order
    ece = numpy_ece(logits, labels)
    assert 0 < ece < 1
    assert abs(evaluation["ece"] / 100 - ece) < 1e-6
    # the figure training wrote from its own final evaluation (no val: best.pt is that final model)
    assert abs(plain_run.summary["final_test_ece"] / 100 - ece) < 1e-6
    assert f"Final Test ECE: {plain_run.summary['final_test_ece']:.2f}%" in (plain_run.path / "summary.txt").read_text()


def test_temperature_lowers_val_nll_of_an_overconfident_run_and_keeps_its_predictions(confident_run, calibrated):
    folder = confident_run.path / "evaluation-calibration"
    val_logits, val_labels = np.load(folder / "val_logits.npy"), np.load(folder / "val_labels.npy")
    test_logits = np.load(folder / "test_logits.npy")
    assert len(val_labels) == 500
    # over-confident: mean top probability on val above the accuracy there, so the fitted T is above 1
    probs = numpy_softmax(val_logits)
    assert probs.max(1).mean() > (probs.argmax(1) == val_labels).mean() + 0.05
    t = calibrated["temperature"]
    assert t > 1.2
    before, after = numpy_nll(val_logits, val_labels), numpy_nll(val_logits, val_labels, t)
    assert after < before - 0.05
    assert abs(calibrated["val"]["after"]["nll"] - after) < 1e-9
    # the minimum of NLL over T, checked around it
    assert after <= min(numpy_nll(val_logits, val_labels, t * 1.02), numpy_nll(val_logits, val_labels, t / 1.02))
    assert np.array_equal((test_logits / t).argmax(1), test_logits.argmax(1))
    assert calibrated["test"]["after"]["accuracy"] == calibrated["test"]["before"]["accuracy"]
    assert calibrated["test"]["after"]["ece"] < calibrated["test"]["before"]["ece"]
    stored = json.loads((confident_run.path / "temperature.json").read_text())
    assert stored["temperature"] == t and stored["fitted_on"] == "val"
    assert (folder / "reliability.png").stat().st_size > 10_000


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(logits * 2.5, labels) - 2.5) < 0.1
    assert abs(fit_temperature(logits * 0.5, labels) - 0.5) < 0.02


def test_calibration_without_a_val_split_is_refused_in_one_line(plain_run):
    result = run_cli("evaluate", str(plain_run.path), "--calibration")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "without --val-size" in result.stderr and "--val-size N" in result.stderr
    assert not (plain_run.path / "temperature.json").exists()


def test_predict_calibrated_divides_the_logits_by_the_stored_temperature(confident_run, calibrated, cifar10_mini):
    images = cifar10_mini.test.images[:6]
    plain = confident_run.predict(images, top_k=10)
    scaled = confident_run.predict(images, top_k=10, calibrated=True)
    t = calibrated["temperature"]
    for p, q in zip(plain, scaled):
        assert p["top"][0]["index"] == q["top"][0]["index"]
        log_p = np.array([e["probability"] for e in sorted(p["top"], key=lambda e: e["index"])], dtype=np.float64)
        expected = numpy_softmax(np.log(log_p)[None] / t)[0]
        got = np.array([e["probability"] for e in sorted(q["top"], key=lambda e: e["index"])])
        assert np.allclose(got, expected, atol=1e-5)


def test_predict_and_export_calibrated_refuse_a_run_without_a_temperature(plain_run, cifar10_sample):
    with pytest.raises(UsageError, match="no stored temperature"):
        plain_run.predict(cifar10_sample.test.images[:1], calibrated=True)
    result = run_cli("export", str(plain_run.path), "--format", "torchscript", "--calibrated")
    assert result.returncode == 2 and "evaluate" in result.stderr and "--calibration" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch 2.14 marks torch.jit.load deprecated
def test_export_calibrated_bakes_the_temperature_into_torchscript(confident_run, calibrated, tmp_path):
    out = tmp_path / "model.pt"
    exported = confident_run.export("torchscript", out, calibrated=True)
    assert exported.max_abs_diff < 1e-4
    extra = {"cifarlab.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["cifarlab.json"])["temperature"] == calibrated["temperature"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = confident_run.model()(x) / calibrated["temperature"]
        assert torch.allclose(loaded(x), expected, atol=1e-5)
