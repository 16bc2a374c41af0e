"""Skip connections as a switch (--no-skip: the plain net of the same layers), He et al.'s CIFAR ResNets with
option-A shortcuts, and the he2015-cifar recipe's schedule."""

import json

import pytest
import torch

import cifarlab
from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, count_params, register_model
from cifarlab.models.listing import format_models, model_rows
from cifarlab.models.resnet_cifar import PadShortcut
from cifarlab.recipes import train_config
from cifarlab.training.optim import lr_factor
from conftest import run_cli


# ---------------------------------------------------------------- counts from the layer shapes

def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def basic_block(cin: int, cout: int) -> int:
    return conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)


def cifar_resnet(depth: int, classes: int = 10) -> int:
    """He et al. sec. 4.2: stem 16, 3 stages of n blocks at 16/32/64, option A (no shortcut parameters), FC."""
    n = (depth - 2) // 6
    total, cin = conv(3, 16, 3) + bn(16), 16
    for width in (16, 32, 64):
        for _ in range(n):
            total, cin = total + basic_block(cin, width), width
    return total + 64 * classes + classes


def resnet18_plain(classes: int = 10) -> int:
    total, cin = conv(3, 64, 3) + bn(64), 64
    for width in (64, 128, 256, 512):
        for _ in range(2):
            total, cin = total + basic_block(cin, width), width
    return total + 512 * classes + classes


# the projection shortcuts of ResNet-18: a 1x1 conv + BN where stages 2, 3 and 4 begin
RESNET18_PROJECTIONS = sum(conv(cin, cout, 1) + bn(cout) for cin, cout in ((64, 128), (128, 256), (256, 512)))


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_counts_follow_the_paper_and_the_plain_net_has_the_same(depth):
    residual, plain = build_model(f"resnet{depth}", 10), build_model(f"resnet{depth}", 10, skip=False)
    assert count_params(residual) == count_params(plain) == cifar_resnet(depth)
    assert residual(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_has_269722_parameters_as_the_issue_and_the_paper_say():
    assert cifar_resnet(20) == 269_722 == count_params(build_model("resnet20", 10))
    # the paper's sizes in millions: 0.27, 0.46, 0.66, 0.85, 1.7
    assert [round(cifar_resnet(d) / 1e6, 2) for d in (20, 32, 44, 56)] == [0.27, 0.46, 0.66, 0.85]
    assert round(cifar_resnet(110) / 1e6, 1) == 1.7


def test_plain_resnet18_is_resnet18_less_its_projection_shortcuts():
    assert count_params(build_model("resnet18", 10)) == resnet18_plain() + RESNET18_PROJECTIONS == 11_173_962
    plain = build_model("resnet18", 10, skip=False)
    assert count_params(plain) == resnet18_plain() == 11_173_962 - RESNET18_PROJECTIONS
    assert all(block.downsample is None for stage in (plain.layer2, plain.layer3, plain.layer4) for block in stage)


def test_option_a_shortcut_subsamples_and_pads_zero_channels_on_both_sides():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "preact-resnet18", "wrn-16-8"])
def test_no_skip_changes_what_the_same_weights_compute(name):
    """The plain net is the same layers without the additions: same weights, other outputs."""
    torch.manual_seed(0)
    residual = build_model(name, 10).eval()
    plain = build_model(name, 10, skip=False).eval()
    plain.load_state_dict(residual.state_dict(), strict=False)   # the plain net lacks the projections
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(residual(x), plain(x))


def test_the_plain_block_is_its_two_convs_alone():
    torch.manual_seed(0)
    block = build_model("resnet20", 10, skip=False).layer1[0].eval()
    x = torch.randn(1, 16, 8, 8)
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    assert torch.equal(block(x), expected)


def test_every_residual_model_declares_skip_and_the_others_do_not():
    residual = {"resnet18", "resnet34", "resnet50", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                "preact-resnet18", "wrn-16-8", "wrn-28-10"}
    assert {name for name, spec in MODELS.items() if "skip" in spec.switches} == residual


def test_a_declared_switch_its_builder_does_not_take_is_refused_at_registration():
    with pytest.raises(ValueError, match=r"declares \['skip'\] but its builder takes no such keyword"):
        @register_model("test-no-skip-arg", title="x", summary="x", switches=("skip", "init"))
        def build(num_classes: int = 10):
            return torch.nn.Linear(1, num_classes)
    assert "test-no-skip-arg" not in MODELS


def test_a_factory_that_takes_skip_gets_the_switch():
    def factory(num_classes: int = 10, skip: bool = True):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))
        net.had_skip = skip
        return net
    assert build_model("mine", 10, supplied=factory, skip=False).had_skip is False


def test_models_table_shows_the_plain_count_where_there_is_a_skip_switch():
    rows, _ = model_rows(10, 3, 32, "cifar10")
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet18"]["plain_params"] == 11_173_962 - RESNET18_PROJECTIONS
    assert by_name["resnet56"]["plain_params"] == cifar_resnet(56)
    assert by_name["basic-cnn"]["plain_params"] is None
    line = next(x for x in format_models(rows, "cifar10").splitlines() if x.startswith("resnet18 "))
    assert f"{11_173_962:,}" in line and f"{11_173_962 - RESNET18_PROJECTIONS:,}" in line


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("model,switches", [("fast94", "none"), ("basic-cnn", "dropout, init")])
def test_no_skip_on_a_model_without_shortcuts_is_refused_in_one_line(model, switches):
    result = run_cli("train", "--model", model, "--dataset", "cifar10", "--sample", "--no-skip")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: --no-skip: model '{model}' has no skip switch " \
                                    f"(its switches: {switches})"


def test_train_no_skip_trains_the_plain_net_and_records_it(cifar_sample, tmp_path):
    out = tmp_path / "plain"
    result = run_cli("train", "--model", "resnet18", "--no-skip", "--dataset", "cifar10", "--data-dir",
                     str(cifar_sample), "--epochs", "1", "--limit-train", "64", "--batch-size", "32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["skip"] is False and config["fingerprint"]["skip"] is False
    assert f"{11_173_962 - RESNET18_PROJECTIONS:,}" in result.stdout
    run = cifarlab.load_run(out)
    assert count_params(run.model()) == 11_173_962 - RESNET18_PROJECTIONS


def test_a_run_of_a_model_without_the_switch_records_skip_as_null(cifar_sample, tmp_path):
    run = cifarlab.train("basic-cnn", "cifar10", data_dir=cifar_sample, epochs=1, limit_train=32, out=tmp_path / "b",
                         quiet=True)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["fingerprint"]["skip"] is None
    assert run.path == tmp_path / "b"


def test_a_fingerprint_from_before_the_skip_switch_still_matches():
    from cifarlab.fingerprint import first_difference

    wanted = {"model": "basic-cnn", "batchnorm": None, "skip": None, "lr": 0.1}
    assert first_difference({"model": "basic-cnn", "batchnorm": None, "lr": 0.1}, wanted) is None
    wanted_resnet = {"model": "resnet18", "skip": False}
    assert first_difference({"model": "resnet18"}, wanted_resnet) == ("skip", True, False)


def test_ablate_without_skip_and_batchnorm_separates_the_shortcut_from_the_norm(cifar_sample, tmp_path):
    result = cifarlab.ablate("resnet20", "cifar10", without="skip,batchnorm", seeds=1, out=tmp_path / "ab",
                             data_dir=cifar_sample, limit_train=64, epochs=1, batch_size=32, quiet=True)
    names = [v["variant"] for v in result["variants"]]
    assert names == ["full", "no-skip", "no-batchnorm"]
    plain = json.loads((tmp_path / "ab" / "no-skip" / "seed-0" / "config.json").read_text())
    no_bn = json.loads((tmp_path / "ab" / "no-batchnorm" / "seed-0" / "config.json").read_text())
    assert (plain["skip"], plain["batchnorm"]) == (False, True)
    assert (no_bn["skip"], no_bn["batchnorm"]) == (True, False)


def test_ablate_by_default_removes_the_articles_four_and_not_the_shortcuts():
    from cifarlab.study.ablate import parse_without

    assert parse_without(None) == (["batchnorm", "kaiming", "dropout", "augment"], False)
    assert parse_without("skip") == (["skip"], False)


# ---------------------------------------------------------------- he2015-cifar

def test_he2015_recipe_follows_the_paper():
    cfg = train_config({"model": "resnet56", "dataset": "cifar10"}, recipe="he2015-cifar")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == ("sgd", 0.1, 0.9, 1e-4, 128)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("multistep", [0.5, 0.75], 0.1)
    assert (cfg.augment, cfg.crop_padding, cfg.val_size, cfg.init) == (["crop", "flip"], 4, 5000, "kaiming")
    # 64k iterations of 128 images over 45,000: 182 epochs
    assert cfg.epochs == round(64_000 * 128 / 45_000)


def test_multistep_cuts_the_lr_at_half_and_three_quarters_of_any_budget():
    cfg = train_config({"model": "resnet20", "dataset": "cifar10", "epochs": 4}, recipe="he2015-cifar")
    steps = 10   # per epoch: 40 in all, cuts at steps 20 and 30
    factors = [lr_factor(cfg, s, steps) for s in range(40)]
    assert factors[:20] == [1.0] * 20
    assert factors[20:30] == pytest.approx([0.1] * 10)
    assert factors[30:] == pytest.approx([0.01] * 10)


@pytest.mark.parametrize("milestones", [[0.75, 0.5], [0.0, 0.5], [0.5, 1.0], "0.5"])
def test_milestones_out_of_order_or_range_are_refused(milestones):
    with pytest.raises(UsageError, match="milestones must be increasing fractions of the run in"):
        train_config({"model": "resnet20", "dataset": "cifar10", "schedule": "multistep", "milestones": milestones})


@pytest.mark.parametrize("steps, expected", [(1, [1.0]), (2, [1.0, 0.1]), (3, [1.0, 1.0, 0.1]),
                                             (4, [1.0, 1.0, 0.1, 0.01])])
def test_multistep_on_a_budget_of_a_few_steps_keeps_the_first_lr_for_the_first_step(steps, expected):
    cfg = train_config({"model": "resnet20", "dataset": "cifar10", "epochs": 1}, recipe="he2015-cifar")
    assert [lr_factor(cfg, s, steps) for s in range(steps)] == pytest.approx(expected)
