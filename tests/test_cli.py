import importlib.util
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import run_cli

from cifarlab.cli_flags import EXPORT_FORMATS, build_parser, given_settings
from cifarlab.models import MODELS
from cifarlab.recipes import train_config
from cifarlab.settings import TrainConfig, flags

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_models_json_lists_names_and_exact_counts():
    result = run_cli("models", "--dataset", "cifar100", "--json")
    assert result.returncode == 0
    rows = {r["name"]: r["params"] for r in json.loads(result.stdout)}
    assert list(rows) == list(MODELS)
    assert {k: rows[k] for k in ("basic-cnn", "deeper-cnn", "resnet18")} == {
        "basic-cnn": 556_708, "deeper-cnn": 7_366_564, "resnet18": 11_220_132}
    assert rows["wrn-28-10"] == 36_536_884 and rows["vit-tiny"] == 4_045_540


@pytest.mark.slow
def test_models_text_lists_the_zoo_and_na_where_the_input_is_too_small():
    result = run_cli("models", "--dataset", "mnist")
    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert lines["vgg16-bn"] == "n/a" and lines["preact-resnet18"] == "11,171,018"
    assert set(lines) == set(MODELS)


def test_recipes_lists_the_article_and_tuned_recipes():
    result = run_cli("recipes", "--json")
    recipes = json.loads(result.stdout)
    assert {"article-basic-cnn", "article-deeper-cnn", "article-resnet18", "tuned-basic-cnn"} <= set(recipes)
    assert recipes["article-basic-cnn"]["epochs"] == 10 and recipes["article-basic-cnn"]["augment"] == []
    assert recipes["article-deeper-cnn"]["epochs"] == 15 and recipes["article-deeper-cnn"]["step_size"] == 5
    assert recipes["article-resnet18"]["optimizer"] == "sgd"
    assert recipes["tuned-basic-cnn"]["epochs"] == 10


def test_train_flags_fill_the_settings_and_override_the_recipe():
    args = build_parser().parse_args(["train", "--model", "basic-cnn", "--dataset", "cifar10", "--recipe",
                                      "article-basic-cnn", "--val-size", "500", "--precision", "fp32",
                                      "--no-download", "--augment", "crop,flip", "--lr", "0.01"])
    cfg = train_config(given_settings(args), args.recipe)
    assert (cfg.recipe, cfg.epochs, cfg.optimizer) == ("article-basic-cnn", 10, "adam")          # from the recipe
    assert (cfg.val_size, cfg.precision, cfg.download) == (500, "fp32", False)                 # from the flags
    assert (cfg.augment, cfg.lr) == (["crop", "flip"], 0.01)               # the flags win over the recipe's [], 1e-3


def test_no_command_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2 and "train" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["ablate", "--help"], ["recipes"]])
def test_help_and_recipes_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cifarlab", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "cifarlab.cli" in imported                     # the log is the real one
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_main_leaves_torch_out_of_sys_modules_for_help_and_recipes():
    code = ("import sys\nfrom cifarlab.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['recipes']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "article-basic-cnn" in result.stdout                  # recipes ran
    assert result.stderr.strip().splitlines()[-1] == "False"


def _time_to_accuracy_parser():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", BENCHMARKS / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser(), ["--target", "50"]


def _train_parser():
    return build_parser(), ["train"]


def _sample(f, flag):
    """(command-line words, the value they give field f) for one of f's flags."""
    if f.type == "bool":
        return [flag], not flag.startswith("--no-")
    if f.metadata["choices"]:
        return [flag, str(f.metadata["choices"][-1])], f.metadata["choices"][-1]
    value = {"int": 3, "int | None": 3, "float": 0.5}.get(f.type, "x")
    return [flag, str(value)], value


@pytest.mark.parametrize("make_parser", [_train_parser, _time_to_accuracy_parser], ids=["train", "time_to_accuracy"])
def test_every_train_config_field_has_a_flag_or_is_declared_without_one(make_parser):
    parser, prefix = make_parser()
    for f in fields(TrainConfig):
        assert "flag" in f.metadata, f"TrainConfig.{f.name} is not declared with setting()"
    # Recipe-only sizes and lr milestones, and the two that cli.py's own flags fill (--recipe, --model-arg).
    assert {f.name for f in fields(TrainConfig) if not flags(f)} == {
        "recipe", "recipe_chosen_by", "model_args", "crop_padding", "jitter", "cutout_size", "milestones"}
    for f in fields(TrainConfig):
        for flag in flags(f):
            words, value = _sample(f, flag)
            given = given_settings(parser.parse_args([*prefix, *words]))
            assert given[f.name] == value, flag


def test_no_x_flags_reach_the_config_through_the_time_to_accuracy_parser():
    parser, prefix = _time_to_accuracy_parser()
    args = parser.parse_args([*prefix, "--model", "deeper-cnn", "--recipe", "article-deeper-cnn", "--no-tensorboard",
                              "--no-batchnorm", "--no-dropout", "--no-channels-last", "--no-download", "--tta",
                              "--no-lookahead", "--augment", "crop,flip"])
    settings = {k: v for k, v in given_settings(args).items() if v is not None}
    cfg = train_config(settings, args.recipe)
    assert (cfg.model, cfg.dataset, cfg.device, cfg.recipe) == ("deeper-cnn", "cifar10", "auto", "article-deeper-cnn")
    assert (cfg.tensorboard, cfg.batchnorm, cfg.dropout, cfg.channels_last, cfg.download) == (False,) * 5
    assert cfg.tta is True and cfg.lookahead is False and cfg.augment == ["crop", "flip"]


def test_resume_refuses_a_setting_and_names_every_flag_that_may_change(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(model="basic-cnn", dataset="cifar10").to_dict()))
    result = run_cli("train", "--resume", str(tmp_path), "--no-tensorboard", "--no-batchnorm")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "cifarlab: error: --resume continues the run with its saved settings; --no-batchnorm cannot be changed "
        "(allowed: --eval-every, --device, --threads, --data-dir, --no-download, --quiet, --no-tensorboard, --diagnostics, --checkpoint-every)"]
    allowed = run_cli("train", "--resume", str(tmp_path), "--no-tensorboard", "--quiet", "--checkpoint-every", "1")
    assert allowed.returncode == 2 and "cannot be changed" not in allowed.stderr   # passed: stops at the checkpoint
    assert "checkpoints/last.pt: no such checkpoint" in allowed.stderr


def test_export_flag_offers_exactly_the_formats_export_writes(tmp_path, monkeypatch):
    """Each format `--format` offers reaches its own writer (none falls through to another's), named after it."""
    import argparse
    import types

    import torch

    from cifarlab import export, runfolder

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    offered = next(a for a in commands["export"]._actions if a.dest == "format").choices
    assert sorted(offered) == ["onnx", "safetensors", "torchscript"]
    stub = types.SimpleNamespace(path=tmp_path, classes=["a", "b"], train_config=lambda: None,
                                 model=lambda weights: torch.nn.Identity(),
                                 dataset_info=lambda: types.SimpleNamespace(channels=3, size=8))
    monkeypatch.setattr(runfolder, "open_source", lambda source, model: (stub, None))
    monkeypatch.setattr(export, "export_metadata", lambda cfg, info, classes: {})
    called = []
    for name in offered:
        monkeypatch.setattr(export, f"export_{name}", lambda *a, name=name: called.append(name) or name)
    monkeypatch.setattr(export, "onnx_max_abs_diff", lambda *a: 0.0)
    monkeypatch.setattr(export, "torchscript_max_abs_diff", lambda *a: 0.0)
    for name in offered:
        called.clear()
        done = export.export_run("RUN", name)
        assert called == [name] and (done.format, done.exporter) == (name, name)
        assert done.path == tmp_path / EXPORT_FORMATS[name]
