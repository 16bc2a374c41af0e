"""resnet18-imagenet: torchvision's ImageNet ResNet-18 adapted to 32x32, from a local weights file."""

import json

import pytest
import torch
import torchvision

from cifarlab.models import build_model, count_params
from cifarlab.models.pretrained import WEIGHTS_FILE, adapt_stem, load_imagenet_weights
from cifarlab.settings import TrainConfig
from cifarlab.training.optim import build_optimizer

from conftest import run_cli


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME holding a state dict with torchvision ResNet-18's keys and shapes (no network)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / WEIGHTS_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch", state


def test_imagenet_weights_are_loaded_and_the_stem_adapted(torch_home):
    _, state = torch_home
    model = load_imagenet_weights(build_model("resnet18-imagenet", 10), download=False)
    ours = model.state_dict()
    assert count_params(model) == 11_173_962
    assert torch.equal(ours["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert torch.equal(ours["bn1.running_var"], state["bn1.running_var"])
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    # each 3x3 kernel keeps the sum (the response to a flat image) of its 7x7 original
    torch.testing.assert_close(ours["conv1.weight"].sum((2, 3)), state["conv1.weight"].sum((2, 3)))
    assert ours["fc.weight"].shape == (10, 512)
    assert isinstance(model.maxpool, torch.nn.Identity)
    out = model.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_imagenet_weights_load_into_our_resnet18_without_a_key_map(torch_home):
    """Our resnet18 has torchvision's names and shapes, so ImageNet's state dict fills it as it fills
    resnet18-imagenet (torchvision's own model): the same network, computing the same."""
    _, state = torch_home
    pretrained = load_imagenet_weights(build_model("resnet18-imagenet", 10), download=False).eval()
    ours = build_model("resnet18", 10)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in pretrained.state_dict().items()]
    load_imagenet_weights(ours, download=False).eval()
    assert torch.equal(ours.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    assert torch.equal(ours.conv1.weight, pretrained.conv1.weight)      # the same adapted 3x3 stem
    ours.fc.load_state_dict(pretrained.fc.state_dict())                 # the one layer left random in each
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), pretrained(x), rtol=0, atol=0)


def test_grayscale_stem_sums_the_rgb_kernels():
    kernel = torch.randn(64, 3, 7, 7)
    gray = adapt_stem(kernel, 1)
    assert gray.shape == (64, 1, 3, 3)
    torch.testing.assert_close(gray.sum((1, 2, 3)), kernel.sum((1, 2, 3)))


def test_backbone_learns_slower_than_the_new_head():
    model = build_model("resnet18-imagenet", 10)
    opt = build_optimizer(model, TrainConfig(model="resnet18-imagenet", optimizer="sgd", lr=0.01,
                                             weight_decay=5e-4, backbone_lr_factor=0.1))
    head = {id(p) for p in model.fc.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == pytest.approx(0.01 if in_head.pop() else 0.001)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 11_173_962


def test_missing_weights_offline_say_where_to_put_them(cifar_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    result = run_cli("train", "--model", "resnet18-imagenet", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                     "--no-download", "--out", str(tmp_path / "run"), env={"TORCH_HOME": str(tmp_path / "empty"),
                                                                          **_env()})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cifarlab: error: ImageNet weights for resnet18-imagenet not found and --no-download given: put "
        f"{WEIGHTS_FILE} (from https://download.pytorch.org/models/{WEIGHTS_FILE}) in "
        f"{tmp_path / 'empty' / 'hub' / 'checkpoints'}")


@pytest.mark.slow
def test_fine_tuning_runs_from_a_local_weights_file(torch_home, tmp_path, cifar_sample):
    home, _ = torch_home
    out = tmp_path / "run"
    result = run_cli("train", "--model", "resnet18-imagenet", "--dataset", "cifar10", "--recipe",
                     "pretrained-resnet18", "--data-dir", str(cifar_sample), "--limit-train", "128", "--epochs", "1",
                     "--no-download", "--quiet", "--out", str(out), env={**_env(), "TORCH_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == 11_173_962 and summary["recipe"] == "pretrained-resnet18"
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_lr_factor"] == 0.1


def _env():
    import os
    return dict(os.environ)
