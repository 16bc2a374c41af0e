"""cifarlab tune: a real Optuna study on cifar-mini, selected on val, test scored only to confirm."""

from __future__ import annotations

import json

import pytest

from cifarlab.config import build_config
from cifarlab.errors import UsageError
from cifarlab.study.tune import load_space
from conftest import run_cli


@pytest.mark.parametrize("text, message", [
    ('[lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01\n', "[lr] needs numbers low < high, got low=0.1, high=0.01"),
    ('[lr]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true\n', "[lr]: a log scale needs low > 0, got 0"),
    ('[seed]\ntype = "int"\nlow = 0\nhigh = 9\n', "[seed] is not a setting a trial may vary"),
    ('[batch_size]\ntype = "categorical"\nchoices = []\n', "[batch_size] needs a non-empty list of choices"),
    ('[lr]\nlow = 1\n', '[lr] needs type = "float", "int" or "categorical"'),
    ("[lr\n", "not valid TOML"),
])
def test_a_bad_space_file_is_one_line_naming_the_setting(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        load_space(path)
    assert str(error.value).startswith(f"--space {path}") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_tune_refuses_a_study_without_a_validation_split(tmp_path):
    result = run_cli("tune", "--model", "basic-cnn", "--dataset", "cifar10", "--trials", "2", "--val-size", "0",
                     "--data-dir", str(tmp_path), "--out", str(tmp_path / "t"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: tune selects on a validation split: --val-size must be > 0 "
                                     "(for example 5000)")


@pytest.mark.slow            # 5 short trials and one confirmation run of basic-cnn: ~40 s on 2 cores
def test_a_study_selects_on_val_writes_a_recipe_and_continues(cifar_mini, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    space = tmp_path / "space.toml"
    space.write_text('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 3e-2\nlog = true\n'
                     '[augment]\ntype = "categorical"\nchoices = ["none", "flip"]\n')
    common = ["tune", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_mini), "--epochs", "2",
              "--limit-train", "1000", "--val-size", "300", "--space", str(space), "--out", str(out),
              "--precision", "fp32", "--seed", "3", "--quiet"]
    first = run_cli(*common, "--trials", "4", "--confirm-seeds", "1")
    assert first.returncode == 0, first.stderr
    result = json.loads((out / "tune.json").read_text())
    assert len(result["trials"]) == 4 and result["val_size"] == 300
    complete = [t for t in result["trials"] if t["state"] == "complete"]
    assert result["best"]["val_acc"] == max(t["value"] for t in complete)
    for t in result["trials"]:                   # the trials never scored the test split
        rows = [json.loads(line) for line in (out / "trials" / f"trial-{t['number']:04d}" / "metrics.jsonl")
                .read_text().splitlines()]
        assert all(r["test_acc"] is None and r["val_acc"] is not None for r in rows)
    best = result["best"]
    assert f"best: trial {best['number']}, {best['val_acc']:.2f}% validation accuracy" in first.stdout
    # the recipe file is a recipe: the best settings, usable as --recipe, naming the trial it came from
    recipe = (out / "best-recipe.toml").read_text()
    assert f"trial {best['number']} of study basic-cnn-cifar10" in recipe
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10"}, str(out / "best-recipe.toml"))
    assert cfg.lr == pytest.approx(best["params"]["lr"]) and cfg.augment == best["params"]["augment"]
    # confirmed once on test: the whole train split (no val), one seed
    confirm = json.loads((out / "confirm" / "summary.json").read_text())
    assert confirm["final_test_acc"] == result["confirm"]["final_test_acc_mean"] > 10.0
    assert json.loads((out / "confirm" / "config.json").read_text())["val_size"] == 0
    html = (out / "report.html").read_text()
    assert "Optimisation history" in html and "Parallel coordinates" in html and "The best trial" in html

    again = run_cli(*common, "--trials", "5", "--confirm-seeds", "0")         # the same study, one more trial
    assert again.returncode == 0, again.stderr
    assert [t["number"] for t in json.loads((out / "tune.json").read_text())["trials"]] == [0, 1, 2, 3, 4]
