import json

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.models import build_model
from cifarlab.recipes import build_config
from cifarlab.training.device import cpu_supports_bf16, resolve_precision
from cifarlab.training.engine import fit

from conftest import run_cli, slow_except, without_timing, write_cifar10

SUMMARY_KEYS = {"model", "dataset", "recipe", "params", "epochs", "final_train_acc", "final_test_acc",
                "best_test_acc", "best_test_epoch", "best_val_acc", "best_val_epoch", "test_acc_at_best_val",
                "overfit_gap", "train_and_eval_time_s", "train_only_time_s", "images_per_s", "device", "precision", "seed", "load_time_s",
                "time_to_result_s", "time_scope", "data_init_time_s", "final_eval_time_s", "compile_warmup_s"}
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
               "epoch_time_s", "train_only_time_s", "images_per_s"}


@pytest.mark.slow
def test_basic_cnn_on_real_cifar_beats_chance_and_writes_the_run_folder(cifar_mini, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe", "article-basic-cnn",
                     "--data-dir", str(cifar_mini), "--epochs", "3", "--val-size", "500", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    # 10 classes: chance is 10%. Three epochs on 4,500 real images reach well above 35%.
    assert summary["final_test_acc"] > 35.0
    assert summary["params"] == 545_098 and summary["epochs"] == 3 and summary["recipe"] == "article-basic-cnn"
    assert summary["overfit_gap"] == pytest.approx(summary["final_train_acc"] - summary["final_test_acc"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(METRIC_KEYS <= set(r) for r in rows)
    assert rows[-1]["test_acc"] == summary["final_test_acc"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["versions"]["torch"] == torch.__version__ and config["val_size"] == 500
    block = (out / "summary.txt").read_text()
    assert "CIFAR-10 Basic CNN Results Summary" in block and "Total Parameters: 545,098" in block
    assert f"Final Test Accuracy: {summary['final_test_acc']:.2f}%" in block
    assert block in result.stdout                                  # printed at the end too
    for name in ("last.pt", "best.pt"):
        state = torch.load(out / "checkpoints" / name, weights_only=True)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    model = build_model("basic-cnn", 10)
    model.load_state_dict(load_file(out / "model.safetensors"))


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_on_cpu(cifar_sample, tmp_path):
    def run(name):
        cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_sample), "epochs": 1,
                            "augment": ["crop", "flip", "jitter", "cutout"], "quiet": True,
                            "out": str(tmp_path / name)})
        fit(cfg)
        rows = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return without_timing(rows)
    assert run("a") == run("b")


def test_fit_returns_the_summary_and_every_caller_writes_and_prints_its_block(cifar_sample, tmp_path, capsys):
    """fit() imports nothing from report/; study.runs.train_run, which every path that trains goes through (train,
    --resume, studies and their workers, tune trials, torchrun ranks), writes summary.txt and prints the block."""
    import dataclasses

    import optuna

    from cifarlab.report.summary import article_summary, publish_run
    from cifarlab.study.runs import run_or_reuse
    from cifarlab.study.tune import objective

    def block_of(folder):
        text = (folder / "summary.txt").read_text()
        assert text == article_summary(json.loads((folder / "summary.json").read_text()))
        return text

    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_sample), "epochs": 1,
                        "limit_train": 100, "tensorboard": False, "out": str(tmp_path / "run")})
    run_or_reuse(cfg)                                                    # a study's run, as its worker trains it
    block = block_of(tmp_path / "run")
    assert "CIFAR-10 Basic CNN Results Summary" in block and block in capsys.readouterr().out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(direction="maximize").ask()
    objective(trial, dataclasses.replace(cfg, val_size=50), {"lr": {"type": "float", "low": 1e-3, "high": 2e-3}},
              tmp_path / "tune", optuna)
    assert "Final Test Accuracy: not scored (--no-test)" in block_of(tmp_path / "tune" / "trials" / "trial-0000")
    capsys.readouterr()
    # another torchrun rank's summary names no run folder: it writes and prints nothing
    assert publish_run({"model": "basic-cnn"}, quiet=False) == {"model": "basic-cnn"}
    assert capsys.readouterr().out == ""


def test_recipe_values_are_overridden_by_flags():
    cfg = build_config({"model": "deeper-cnn", "dataset": "cifar10", "epochs": 2, "lr": 0.01},
                       "article-deeper-cnn")
    assert cfg.epochs == 2 and cfg.lr == 0.01 and cfg.augment == ["crop", "flip", "jitter"]
    assert cfg.schedule == "step" and cfg.step_size == 5


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    from cifarlab.training import device

    # oneDNN says yes on any AVX-512 CPU; only the CPU's own flags tell native bf16 from emulated.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert not cpu_supports_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n")
    assert cpu_supports_bf16("flags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_supports_bf16("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


# The whole line each bad value gives; "…" stands for a list of names that grows as models and recipes are added.
BAD_ARGS = [
    (["--epochs", "0"], "cifarlab: error: --epochs must be an integer >= 1, got 0"),
    (["--batch-size", "-4"], "cifarlab: error: --batch-size must be an integer >= 1, got -4"),
    (["--lr", "nan"], "cifarlab: error: --lr must be a finite number > 0, got nan"),
    (["--lr", "0"], "cifarlab: error: --lr must be a finite number > 0, got 0.0"),
    (["--recipe", "no-such-recipe"], "cifarlab: error: unknown recipe 'no-such-recipe' (choose from article-basic-cnn, "
                                     "article-deeper-cnn, article-resnet18, …)"),
    (["--augment", "crop,rotate"], "cifarlab: error: unknown augmentation 'rotate' (choose from crop, translate, flip, "
                                   "alt-flip, jitter, cutout, or none)"),
    (["--model", "vgg99"], "cifarlab: error: unknown model 'vgg99' (choose from basic-cnn, deeper-cnn, resnet18, …, "
                           "or give your own as module:factory)"),
    (["--dataset", "imagenet"], "cifarlab: error: unknown dataset 'imagenet' (choose from cifar10, cifar100, mnist, "
                                "fashion-mnist)"),
    (["--model", "deeper-cnn", "--dataset", "mnist", "--val-size", "-1"],
     "cifarlab: error: --val-size must be >= 0, got -1"),
]


@pytest.mark.parametrize("extra,expected", slow_except({0}, BAD_ARGS),            # quick: --epochs
                         ids=[m.split()[2] for _, m in BAD_ARGS])
def test_bad_cli_values_are_one_line_exit_2(tmp_path, extra, expected):
    args = {"--model": "basic-cnn", "--dataset": "cifar10"}
    it = iter(extra)
    for flag in it:
        args[flag] = next(it)
    result = run_cli("train", *[x for kv in args.items() for x in kv], "--data-dir", str(tmp_path), "--no-download")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    head, elided, tail = expected.partition("…")
    if elided:
        assert line.startswith(head) and line.endswith(tail) and len(line) > len(expected), line
    else:
        assert line == expected


def test_val_size_not_smaller_than_train_is_refused(tmp_path):
    write_cifar10(tmp_path, per_batch=10, test=10)
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                     "--val-size", "50", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--val-size 50 must be smaller than the train split (50 images)" in result.stderr


@pytest.mark.slow
def test_out_holding_another_run_is_refused_unless_overwrite(tmp_path):
    write_cifar10(tmp_path, per_batch=10, test=10)
    args = ["train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
            "--batch-size", "16", "--out", str(tmp_path / "run"), "--quiet"]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0


def test_broken_recipe_file_names_file_and_line(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('epochs = 3\nlr = = 0.1\n')
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe", str(recipe))
    assert result.returncode == 2 and str(recipe) in result.stderr and "line 2" in result.stderr


@pytest.mark.slow
def test_unknown_recipe_key_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('epochs = 3\nlearning_rate = 0.1\n')
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: {recipe}: unknown recipe setting 'learning_rate'"


def test_model_needing_larger_inputs_than_the_dataset_is_refused(monkeypatch):
    import dataclasses

    from cifarlab import models
    from cifarlab.errors import UsageError

    big = dataclasses.replace(models.MODELS["resnet18"], min_size=64)
    monkeypatch.setitem(models.MODELS, "resnet18", big)
    with pytest.raises(UsageError, match="model 'resnet18' needs inputs of at least 64x64; mnist images are 28x28"):
        build_config({"model": "resnet18", "dataset": "mnist"})
