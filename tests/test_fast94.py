"""fast94 and its recipe's parts: whitening stem, lookahead, alternating flip, reflect translate,
BN learning-rate factor, shifted test-time views, and exact resume with all of them on."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.data.formats import Split
from cifarlab.data.loader import AugmentSettings, DeviceLoader
from cifarlab.errors import Interrupted
from cifarlab.models import build_model, count_params
from cifarlab.recipes import build_config
from cifarlab.training import engine
from cifarlab.training.engine import fit
from cifarlab.training.evaluation import tta_logits
from cifarlab.training.lookahead import MAX_DECAY, Lookahead
from cifarlab.training.optim import build_optimizer
from conftest import StopAtStep, without_timing


def test_fast94_parameter_counts_are_pinned():
    assert count_params(build_model("fast94", 10)) == 1_972_792
    assert count_params(build_model("fast94", 100)) == 1_995_832
    assert count_params(build_model("fast94", 10, in_channels=1, image_size=28)) == 1_963_304
    trainable = sum(p.numel() for p in build_model("fast94", 10).parameters() if p.requires_grad)
    assert trainable == 1_971_352          # the whitening filters and the BN scales are frozen


def whitened(model, x):
    out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])   # the 12 filters (the rest: their negatives)
    f = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    f = f - f.mean(0)
    return f.T @ f / len(f)


def test_whitening_stem_decorrelates_2x2_patches_of_real_images(real_batch_mini):
    # The larger data: fitted on the sample's 200 images, held-out correlations reach 0.17.
    train, _ = real_batch_mini(2000, "train")
    test, _ = real_batch_mini(1000, "test")
    model = build_model("fast94", 10)
    model.init_from_data(train)
    cov = whitened(model, train)
    off = cov - torch.diag(cov.diag())
    assert off.abs().max() < 1e-3                   # decorrelated on the images it was fitted to
    assert cov.diag().max() <= 1.0 + 1e-6 and (cov.diag() > 0.95).sum() >= 8   # unit variance (eps-damped)
    # on images it never saw: neighbouring raw pixels correlate at > 0.8, whitened channels at < 0.15
    held_out = whitened(model, test)
    corr = held_out / torch.outer(held_out.diag(), held_out.diag()).sqrt()
    assert (corr - torch.eye(12, dtype=corr.dtype)).abs().max() < 0.15
    raw = test.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert torch.corrcoef(raw.T.double()).sub(torch.eye(12)).abs().max() > 0.8
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def asymmetric_split(n=64):
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, :, :, 0] = 255                        # a bright left column: mirrored, it moves to the right
    images[:, 0, 0, 1] = torch.arange(n, dtype=torch.uint8)   # the image's number, for identification
    return Split(images, torch.zeros(n, dtype=torch.long))


def flipped_by_image(loader, epoch):
    loader.set_position(epoch)
    result = {}
    for x, _ in loader:
        raw = (x * 0.5 + 0.5) * 255
        for img in raw.round():
            mirrored = bool(img[1, 0, 7] > 128)
            ident = int(img[0, 0, 6 if mirrored else 1])
            result[ident] = mirrored
    return result


def test_alt_flip_mirrors_every_image_in_exactly_one_of_two_consecutive_epochs():
    loader = DeviceLoader(asymmetric_split(), 16, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), shuffle=True,
                          augment=AugmentSettings(("alt-flip",)), seed=3)
    e0, e1, e2 = (flipped_by_image(loader, e) for e in range(3))
    assert len(e0) == 64 and 16 < sum(e0.values()) < 48
    assert all(e0[i] != e1[i] for i in range(64))   # each epoch pair shows every image both ways
    assert e2 == e0


def test_translate_crops_from_a_reflected_border_never_from_black():
    ramp = (torch.arange(8) * 30 + 10).to(torch.uint8)               # columns 10, 40, ..., 220
    split = Split(ramp.expand(64, 3, 8, 8).clone(), torch.zeros(64, dtype=torch.long))

    def batches(op):
        loader = DeviceLoader(split, 64, (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), shuffle=True,
                              augment=AugmentSettings((op,), crop_padding=2), seed=0)
        return torch.cat([x for x, _ in loader]) * 255
    moved = batches("translate").round()
    rows = moved[:, 0, 0]                                             # one row per image
    offsets = [(row[2] - ramp[2].float()) / 30 for row in rows]       # how far each image moved
    assert {int(o) for o in offsets} == {-2, -1, 0, 1, 2}             # every shift shows up
    for row, o in zip(rows, offsets):                                 # and the border is the mirror image
        o = int(o)
        src = [abs(i + o) if i + o >= 0 else -(i + o) for i in range(8)]
        src = [14 - s if s > 7 else s for s in src]
        assert torch.equal(row, ramp[src].float())
    assert moved.min() >= 10                                          # never a black (zero) border
    assert batches("crop").min() == 0.0                               # zero padding shows through


def test_lookahead_pulls_the_weights_to_a_slow_average_and_finishes_on_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    la = Lookahead(model, total_steps=100)
    start = model.weight.detach().clone()
    assert la.decay(0) == 0 and la.decay(100) == pytest.approx(MAX_DECAY) and la.decay(50) == pytest.approx(
        MAX_DECAY / 8)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(4)                                      # not a sync step: nothing moves
    assert torch.equal(model.weight, start + 1)
    la.step(100)                                    # sync: slow += (1 - decay)(fast - slow); fast = slow
    expected = start + (1 - MAX_DECAY)
    assert torch.allclose(model.weight, expected) and torch.allclose(la.slow[0], expected)
    saved = la.state_dict()
    assert list(saved["slow"]) == ["weight", "bias"]
    with torch.no_grad():
        model.weight.add_(5.0)
    other = Lookahead(model, 100)
    other.load_state_dict(saved)
    other.finish()
    assert torch.allclose(model.weight, expected)


def test_lookahead_averages_bn_running_statistics_but_not_the_batch_count():
    bn = torch.nn.BatchNorm1d(3)
    la = Lookahead(bn, total_steps=5)
    assert "num_batches_tracked" not in la.names and "running_mean" in la.names
    bn.train()
    bn(torch.randn(8, 3) + 4)                       # running_mean moves towards 4, the count to 1
    before = bn.running_mean.clone()
    la.step(5)                                      # decay 0.95^5 at the end: the slow copy moves 1 - 0.774
    assert torch.allclose(bn.running_mean, before * (1 - MAX_DECAY))
    assert int(bn.num_batches_tracked) == 1
    with pytest.raises(ValueError):
        Lookahead(torch.nn.BatchNorm1d(4), 5).load_state_dict(la.state_dict())


@pytest.mark.parametrize("settings, message", [
    ({"augment": ["crop", "translate"]}, "augment: choose one of crop and translate, not both"),
    ({"augment": ["flip", "alt-flip"]}, "augment: choose one of flip and alt-flip, not both"),
    ({"tta_shift": 9}, "--tta-shift must be 0..4 pixels, got 9"),
    ({"norm_lr_factor": 0}, "--norm-lr-factor must be a finite number > 0, got 0"),
    ({"lookahead": "false"}, "lookahead must be true or false, got 'false'"),
])
def test_fast94_settings_out_of_range_are_one_line_errors(settings, message):
    from cifarlab.errors import UsageError
    with pytest.raises(UsageError, match=message.replace("+", r"\+").replace(".", r"\.")):
        build_config({"model": "fast94", "dataset": "cifar10", **settings}, "fast94")


def test_norm_lr_factor_gives_batchnorm_parameters_their_own_lr():
    model = build_model("fast94", 10)
    cfg = build_config({"model": "fast94", "dataset": "cifar10"}, "fast94-sgd")     # SGD: one lr per group
    opt = build_optimizer(model, cfg)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()
                if p.requires_grad}
    for group in opt.param_groups:
        is_norm = {id(p) in norm_ids for p in group["params"]}
        assert len(is_norm) == 1
        assert group["lr"] == pytest.approx(cfg.lr * (cfg.norm_lr_factor if is_norm.pop() else 1.0))
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(
        1 for p in model.parameters() if p.requires_grad)


def test_shifted_tta_views_move_the_image_one_pixel_each_way():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    seen = []

    def record(v):
        seen.append(v.clone())
        return v.flatten(1)
    out = tta_logits(record, x, flip=False, shift=1)
    assert len(seen) == 3 and torch.equal(seen[0], x)
    assert torch.equal(seen[1][:, :, 1:, 1:], x[:, :, :-1, :-1])     # moved down-right (padding up-left)
    assert torch.equal(seen[2][:, :, :-1, :-1], x[:, :, 1:, 1:])     # moved up-left
    # the plain view weighs 1/2, each shifted one 1/4
    assert torch.allclose(out, seen[0].flatten(1) / 2 + (seen[1].flatten(1) + seen[2].flatten(1)) / 4)
    seen.clear()
    tta_logits(record, x, flip=True, shift=1)
    assert len(seen) == 6 and torch.equal(seen[1], x.flip(3))


def mini_fast94(data_dir, tmp_path, name, **extra):
    # the recipe as shipped but smaller: 8 steps of 64 per epoch
    values = {"model": "fast94", "dataset": "cifar10", "data_dir": str(data_dir), "epochs": 2, "limit_train": 512,
              "batch_size": 64, "eval_batch_size": 500, "quiet": True, "tensorboard": False,
              "out": str(tmp_path / name), **extra}
    return build_config(values, "fast94-sgd")


@pytest.mark.slow                                       # three fast94 trainings on 2 CPU cores: ~20 s
def test_fast94_recipe_learns_real_images_and_resumes_bit_exactly(cifar_mini_short_test, tmp_path, monkeypatch):
    cifar_mini = cifar_mini_short_test                  # scored with flip-shift TTA on 200 real test images
    summary = fit(mini_fast94(cifar_mini, tmp_path, "whole"))
    # 16 steps on 512 real images: well above the 10% of chance, with every part of the recipe on
    assert summary["final_test_acc"] > 20.0 and summary["params"] == 1_972_792
    # the saved run reloads (frozen whitening included) and scores what training reported
    from cifarlab.evaluate import evaluate_run
    again = evaluate_run(tmp_path / "whole", "test", tta="flip-shift", out=tmp_path / "eval")
    assert again["accuracy"] == pytest.approx(summary["final_test_acc"], abs=0.2)

    monkeypatch.setattr(engine, "StopSignals", StopAtStep(11))     # stop mid-epoch 2, then resume
    with pytest.raises(Interrupted):
        fit(mini_fast94(cifar_mini, tmp_path, "cut"))
    monkeypatch.undo()
    fit(mini_fast94(cifar_mini, tmp_path, "cut"), resume=True)

    def rows(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return without_timing([json.loads(line) for line in lines])
    assert rows("cut") == rows("whole")
    whole, cut = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


@pytest.mark.slow
def test_a_recipe_made_for_one_model_names_it_and_warns_on_another(tmp_path):
    from conftest import run_cli
    named = run_cli("train", "--recipe", "fast94", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                    "--no-download")
    assert named.returncode == 2 and "needs --model" not in named.stderr and "cifar-10-batches-py" in named.stderr
    other = run_cli("train", "--model", "basic-cnn", "--recipe", "fast94", "--dataset", "cifar10",
                    "--data-dir", str(tmp_path), "--no-download")
    assert "recipe fast94 was made for fast94, not basic-cnn" in other.stderr
