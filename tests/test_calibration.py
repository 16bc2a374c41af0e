"""Calibration on real runs: ECE recomputed here in numpy from the saved logits, temperature scaling fitted on val
(lower val NLL, the same predictions), the stored temperature used by predict and export, and the refusals."""

import hashlib
import json
import shutil

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


# ---- evaluate runs one evaluation at a time, and refuses flags the chosen one would drop

EVALUATE_REFUSALS = {
    "dataset with limit": (["--dataset", "cifar10.1", "--limit", "500"],
                           "--limit only applies to --corruptions or --corruptions-dir; --dataset would ignore it"),
    "calibration with corruptions": (["--calibration", "--corruptions", "fog"],
                                     "--corruptions and --calibration are separate evaluations"),
    "corruptions dir with dataset": (["--corruptions-dir", "c10c", "--dataset", "cifar10.1"],
                                     "--corruptions-dir and --dataset are separate evaluations"),
    "severities alone": (["--severities", "1", "--limit", "5"], "--limit, --severities only apply to --corruptions "
                         "or --corruptions-dir, and neither was given"),
    "seed with calibration": (["--calibration", "--corruption-seed", "0"],
                              "--corruption-seed only applies to --corruptions or --corruptions-dir; --calibration"),
    "seed with official files": (["--corruptions-dir", "c10c", "--corruption-seed", "1"],
                                 "the files in --corruptions-dir are already corrupted"),
    "dataset with split": (["--dataset", "cifar10.1", "--split", "val"], "--dataset cifar10.1 is a test set"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_REFUSALS))
def test_evaluate_refuses_two_modes_or_a_flag_the_mode_would_drop(plain_run, case, capsys):
    from cifarlab.cli import main

    flags, message = EVALUATE_REFUSALS[case]
    before = sorted(p.name for p in plain_run.path.iterdir())
    assert main(["evaluate", str(plain_run.path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in plain_run.path.iterdir()) == before     # nothing evaluated, nothing written


def test_evaluate_refusal_is_one_line_from_the_command_line(plain_run):
    result = run_cli("evaluate", str(plain_run.path), "--dataset", "cifar10.1", "--limit", "500")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "--dataset would ignore it" in result.stderr


def test_python_evaluate_refuses_a_split_beside_a_dataset_and_a_seed_beside_official_files(plain_run, tmp_path):
    with pytest.raises(UsageError, match=r"dataset='cifar10.1' is a test set; leave out split='val'"):
        plain_run.evaluate(split="val", dataset="cifar10.1")
    with pytest.raises(UsageError, match="already corrupted"):
        plain_run.evaluate_corruptions(corruptions_dir=tmp_path, seed=1)


# ---- the stored temperature belongs to the weights it was fitted on

def test_a_temperature_is_refused_with_weights_other_than_those_it_was_fitted_on(confident_run, calibrated,
                                                                                 cifar10_mini, tmp_path):
    run = cifarlab.load_run(shutil.copytree(confident_run.path, tmp_path / "run"))
    images = cifar10_mini.test.images[:2]
    assert run.predict(images, calibrated=True)      # the copy's weights are the very bytes T was fitted on
    stored = json.loads((run.path / "temperature.json").read_text())
    weights = run.weights_to_load()
    assert stored["weights"] == {"name": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # the weights change after calibrating (as a resume would): every use of T is refused
    checkpoint = torch.load(weights, weights_only=True)
    first = next(iter(checkpoint["model"]))
    checkpoint["model"][first] = checkpoint["model"][first] + 0.01
    torch.save(checkpoint, weights)
    again = f"fit it again with `cifarlab evaluate {run.path} --calibration`"
    with pytest.raises(UsageError, match=f"fitted on {weights.name} .* not on {weights}") as err:
        run.predict(images, calibrated=True)
    assert again in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="the weights changed since"):
        run.export("safetensors", tmp_path / "m.safetensors", calibrated=True)
    result = run_cli("export", str(run.path), "--format", "torchscript", "--calibrated", "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and again in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "m").exists()
    # a temperature.json that does not name its weights (an older cifarlab's) is refused too
    (run.path / "temperature.json").write_text(json.dumps({**stored, "weights": weights.name}))
    with pytest.raises(UsageError, match="does not identify by sha256"):
        run.predict(images, calibrated=True)
    # and the advice works: calibrating again fits T on the weights as they are now
    refitted = run.calibrate()
    scaled = run.predict(images, top_k=10, calibrated=True)
    assert refitted["temperature"] != calibrated["temperature"] and len(scaled) == 2


# ---- an npz: dataset's own val split is a val split

def test_calibration_fits_on_the_val_split_an_npz_dataset_ships(cifar10_sample, tmp_path):
    train, test = cifar10_sample.train, cifar10_sample.test
    nhwc = lambda images: images.permute(0, 2, 3, 1).numpy()   # noqa: E731
    np.savez(tmp_path / "mine.npz", x_train=nhwc(train.images[:150]), y_train=train.labels[:150].numpy(),
             x_val=nhwc(train.images[150:]), y_val=train.labels[150:].numpy(),
             x_test=nhwc(test.images), y_test=test.labels.numpy())
    run = cifarlab.train("basic-cnn", f"npz:{tmp_path / 'mine.npz'}", recipe="article-basic-cnn", epochs=6,
                         quiet=True, out=str(tmp_path / "run"))
    result = run.calibrate()
    assert result["val"]["before"]["images"] == 50 and result["test"]["before"]["images"] == 100
    val_logits = np.load(run.path / "evaluation-calibration" / "val_logits.npy")
    val_labels = np.load(run.path / "evaluation-calibration" / "val_labels.npy")
    assert np.array_equal(val_labels, train.labels[150:].numpy())     # the npz's x_val, not a cut of x_train
    assert numpy_nll(val_logits, val_labels, result["temperature"]) <= numpy_nll(val_logits, val_labels)
    assert json.loads((run.path / "temperature.json").read_text())["temperature"] == result["temperature"]


# ---- a minimum beyond the search range is refused, never clipped to its edge

def test_fit_temperature_refuses_a_minimum_beyond_either_edge_of_the_search():
    labels = torch.arange(10).repeat(50)
    one_hot = torch.nn.functional.one_hot(labels, 10).double()
    # the right class always has the lowest logit: NLL falls all the way to T = infinity (the uniform guess)
    with pytest.raises(UsageError, match=r"still falls past T = 20, the largest temperature searched") as err:
        fit_temperature(-one_hot, labels)
    assert err.value.edge == 20 and "\n" not in str(err.value)
    # always right by a margin: NLL = log(1 + 9 exp(-0.5 / T)) falls all the way to T = 0
    with pytest.raises(UsageError, match=r"still falls below T = 0.05, the smallest temperature searched") as err:
        fit_temperature(0.5 * one_hot, labels)
    assert err.value.edge == 0.05


# ---- figures are written atomically

def test_a_figure_that_fails_to_draw_leaves_the_old_picture_whole(tmp_path):
    from cifarlab.report.plots import plt, save

    path = tmp_path / "reliability.png"
    save(plt.figure(), path)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")                      # a PNG, though drawn under a temporary name
    assert save(plt.figure(), tmp_path / "svg" / "curves.svg").read_bytes().startswith(b"<?xml")   # compare --plot
    fig = plt.figure()

    def dies_half_way(target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"\x89PNG half")
        raise RuntimeError("disk full")
    fig.savefig = dies_half_way
    with pytest.raises(RuntimeError, match="disk full"):
        save(fig, path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["reliability.png"]
