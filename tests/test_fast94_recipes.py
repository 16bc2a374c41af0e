"""fast94 names the best fast94 recipe for the device (fast94-muon on a CPU and CUDA, fast94-sgd on MPS); each trains on
the real sample and resumes bit-exactly, and a resumed fast94 run keeps the recipe it started with."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cifarlab import recipes
from cifarlab.errors import Interrupted, UsageError
from cifarlab.models import build_model
from cifarlab.recipes import build_config, train_config
from cifarlab.training import engine
from cifarlab.training.engine import fit
from cifarlab.training.optim import build_optimizer, build_scheduler
from conftest import StopAtStep, run_cli, without_timing


@pytest.mark.parametrize("device, chosen, optimizer, lookahead", [
    ("cpu", "fast94-muon", "muon", False), ("cuda", "fast94-muon", "muon", False), ("mps", "fast94-sgd", "sgd", True)])
def test_fast94_records_the_recipe_it_chose_for_the_device(device, chosen, optimizer, lookahead):
    notes = []
    cfg = train_config({"dataset": "cifar10", "device": device}, "fast94", note=notes.append)
    assert (cfg.recipe, cfg.model, cfg.optimizer, cfg.lookahead) == (chosen, "fast94", optimizer, lookahead)
    assert cfg.recipe_chosen_by == "fast94"
    assert notes == [f"cifarlab: note: recipe fast94 on {device} is {chosen} (fast94 chooses by device: "
                     "`cifarlab recipes`)"]
    # what fast94 gives is exactly the named recipe's settings
    named = train_config({"dataset": "cifar10", "device": device}, chosen, note=notes.append)
    assert named.recipe_chosen_by is None and cfg == dataclasses.replace(named, recipe_chosen_by="fast94")


@pytest.mark.parametrize("cuda, chosen", [(True, "fast94-muon"), (False, "fast94-sgd")])
def test_fast94_on_device_auto_follows_what_the_machine_has(monkeypatch, cuda, chosen):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: not cuda)    # else MPS
    assert build_config({"model": "fast94", "dataset": "cifar10"}, "fast94").recipe == chosen


def test_fast94_and_the_recipe_it_chose_are_one_run_to_a_study():
    from cifarlab.fingerprint import fingerprint
    settings = {"dataset": "cifar10", "device": "cpu", "threads": 1}
    chose = train_config(settings, "fast94", note=lambda m: None)
    assert fingerprint(chose) == fingerprint(train_config(settings, "fast94-muon"))
    assert fingerprint(chose) != fingerprint(train_config(settings, "fast94-sgd"))


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_a_bad_whiten_bias_epochs_is_refused(value):
    with pytest.raises(UsageError, match="^--whiten-bias-epochs must be a finite number >= 0, got"):
        build_config({"model": "fast94", "dataset": "cifar10", "whiten_bias_epochs": value})


def test_a_device_missing_from_by_device_is_refused_in_one_line(tmp_path):
    own = tmp_path / "mine.toml"
    own.write_text('models = ["fast94"]\n[by_device]\ncpu = "fast94-sgd"\n')
    assert build_config({"model": "fast94", "dataset": "cifar10", "device": "cpu"}, str(own)).recipe == "fast94-sgd"
    with pytest.raises(UsageError, match=f"^{own}: its \\[by_device\\] table names no recipe for cuda$"):
        build_config({"model": "fast94", "dataset": "cifar10", "device": "cuda"}, str(own))


def test_recipes_says_what_fast94_chooses_on_each_device():
    text = run_cli("recipes").stdout
    assert ("    chooses by the device the run trains on: cpu -> fast94-muon, cuda -> fast94-muon, mps -> fast94-sgd; "
            "the run records the one it got") in text.splitlines()
    listed = json.loads(run_cli("recipes", "--json").stdout)
    assert listed["fast94"]["by_device"] == {"cpu": "fast94-muon", "cuda": "fast94-muon", "mps": "fast94-sgd"}
    assert listed["fast94-muon"]["optimizer"] == "muon" and listed["fast94-sgd"]["optimizer"] == "sgd"


def test_fast94_muon_has_airbench94_muon_ingredients():
    cfg = build_config({"model": "fast94", "dataset": "cifar10"}, "fast94-muon")
    assert (cfg.epochs, cfg.batch_size, cfg.schedule, cfg.lookahead, cfg.label_smoothing) == (8, 2000, "linear",
                                                                                              False, 0.2)
    assert (cfg.muon_ns_steps, cfg.muon_renorm, cfg.muon_momentum, cfg.muon_lr) == (3, True, 0.6, 0.24)
    assert (cfg.augment, cfg.crop_padding, cfg.tta, cfg.tta_shift, cfg.whiten_bias_epochs) == (
        ["translate", "alt-flip"], 2, True, 1, 3.0)


def test_whitening_bias_learns_at_the_bias_lr_decaying_to_zero_then_stays_frozen():
    cfg = build_config({"model": "fast94", "dataset": "cifar10", "epochs": 3, "whiten_bias_epochs": 1.0},
                       "fast94-muon")
    model = build_model("fast94", 10)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    whiten = next(g for g in optimizer.param_groups if g.get("whiten"))
    head = next(g for g in optimizer.param_groups if any(p is model.head.weight for p in g["params"]))
    assert whiten["params"] == [model.whiten.bias]
    seen = []
    for _ in range(12):
        seen.append((whiten["lr"], head["lr"]))
        optimizer.step()
        scheduler.step()
    bias_lr = cfg.lr * cfg.norm_lr_factor
    assert [w for w, _ in seen] == pytest.approx([bias_lr * f for f in (1, 0.75, 0.5, 0.25)] + [0.0] * 8)
    assert [h for _, h in seen] == pytest.approx([cfg.lr * (1 - s / 12) for s in range(12)])     # linear decay


def test_whiten_bias_epochs_needs_a_whitening_stem():
    cfg = build_config({"model": "basic-cnn", "dataset": "cifar10", "whiten_bias_epochs": 1.0, "optimizer": "sgd"})
    with pytest.raises(UsageError, match="^--whiten-bias-epochs needs a model with a learnable whitening-stem bias"):
        build_optimizer(build_model("basic-cnn", 10), cfg)


def _tiny(data_dir, tmp_path, name, recipe):
    # 4 steps of 50 real images per epoch, 2 epochs; the whitening bias freezes after the first epoch
    values = {"dataset": "cifar10", "data_dir": str(data_dir), "epochs": 2, "limit_train": 200, "batch_size": 50,
              "eval_batch_size": 100, "whiten_bias_epochs": 1.0 if recipe == "fast94-muon" else None,
              "device": "cpu", "quiet": True, "tensorboard": False, "download": False, "out": str(tmp_path / name)}
    return train_config(values, recipe)


@pytest.mark.slow                              # two tiny fast94 trainings and a resume, per recipe
@pytest.mark.parametrize("recipe, recorded", [("fast94-sgd", "fast94-sgd"), ("fast94", "fast94-muon")])
def test_each_fast94_recipe_trains_the_sample_and_resumes_bit_exactly(cifar_sample, tmp_path, monkeypatch,
                                                                     recipe, recorded):
    summary = fit(_tiny(cifar_sample, tmp_path, "whole", recipe))
    assert math.isfinite(summary["final_test_acc"])
    monkeypatch.setattr(engine, "StopSignals", StopAtStep(6))          # Ctrl-C at epoch 2, step 2
    with pytest.raises(Interrupted):
        fit(_tiny(cifar_sample, tmp_path, "cut", recipe))
    # a resumed run keeps its recorded recipe, even where fast94 would now choose another
    monkeypatch.setattr(recipes, "device_kind", lambda device: "mps")
    from cifarlab.api import resume
    resume(tmp_path / "cut")
    monkeypatch.undo()
    for name in ("whole", "cut"):
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert (saved["recipe"], saved["recipe_chosen_by"]) == (recorded, None if recipe == recorded else recipe)
    rows = {name: without_timing([json.loads(line) for line in
                                  (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
            for name in ("whole", "cut")}
    assert rows["cut"] == rows["whole"] and len(rows["whole"]) == 2
    whole, cut = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
