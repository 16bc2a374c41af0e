import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cifarlab
from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, count_params
from cifarlab.models.check import check_output
from conftest import run_cli, write_cifar10, write_cifar100

# The article's published parameter counts: part of the contract, compared exactly.
EXPECTED = {
    ("basic-cnn", 10, 3, 32): 545_098,
    ("basic-cnn", 100, 3, 32): 556_708,
    ("basic-cnn", 10, 1, 28): 421_642,
    ("deeper-cnn", 10, 3, 32): 7_320_394,
    ("deeper-cnn", 100, 3, 32): 7_366_564,
    ("deeper-cnn", 10, 1, 28): 5_746_378,
    ("resnet18", 10, 3, 32): 11_173_962,
    ("resnet18", 100, 3, 32): 11_220_132,
    ("resnet18", 10, 1, 28): 11_172_810,
}


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}cls-{k[2]}ch")
def test_parameter_count_is_exact(key):
    name, classes, channels, size = key
    model = build_model(name, classes, channels, size)
    assert count_params(model) == EXPECTED[key]
    out = model.eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, classes)


def test_no_batchnorm_removes_every_norm_layer():
    model = build_model("deeper-cnn", 10, batchnorm=False)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())
    # 3840 conv-BN + 3072 FC-BN parameters go away.
    assert count_params(model) == 7_320_394 - 3840 - 3072


def test_no_dropout_sets_every_dropout_rate_to_zero():
    model = build_model("deeper-cnn", 10, dropout=False)
    rates = [m.p for m in model.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert rates and all(p == 0.0 for p in rates)
    with_dropout = [m.p for m in build_model("deeper-cnn", 10).modules() if isinstance(m, torch.nn.Dropout2d)]
    assert with_dropout == [0.25] * 4


@pytest.mark.parametrize("init,expected_std", [("kaiming", (2 / (256 * 9)) ** 0.5), ("xavier", None)])
def test_init_schemes_set_the_documented_spread(init, expected_std):
    torch.manual_seed(0)
    model = build_model("deeper-cnn", 10, init=init)
    conv = model.features[3][0]   # the 256 -> 512 conv: fan_in 256 * 9
    std = conv.weight.std().item()
    if expected_std is None:      # xavier uniform: bound sqrt(6 / (fan_in + fan_out))
        bound = (6 / (256 * 9 + 512 * 9)) ** 0.5
        assert conv.weight.abs().max().item() <= bound
        assert std == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    else:
        assert std == pytest.approx(expected_std, rel=0.05)
    assert torch.all(conv.bias == 0)


def test_every_registered_model_trains_one_step_on_mnist_shapes():
    for name in (n for n, spec in MODELS.items() if spec.min_size <= 28):   # VGG's 5 pools need 32x32
        model = build_model(name, 10, 1, 28)
        loss = model(torch.randn(2, 1, 28, 28)).logsumexp(1).mean()   # 2: BN still sees >1 value per channel
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)   # fast94 freezes some


def test_basic_cnn_pool_before_relu_matches_the_article_order():
    """Pooling first is a speed rewrite: outputs and gradients equal ReLU -> pool."""
    torch.manual_seed(0)
    model = build_model("basic-cnn", 10).eval()
    conv1, conv2 = model.features[0], model.features[3]
    classifier = model.classifier
    x = torch.randn(8, 3, 32, 32)

    def article_order(inp):
        f = torch.nn.functional
        h = f.max_pool2d(f.relu(conv1(inp)), 2)
        return classifier(f.max_pool2d(f.relu(conv2(h)), 2))

    ours = model(x)
    ours.square().sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = article_order(x)
    reference.square().sum().backward()
    assert torch.equal(ours, reference)
    for got, want in zip(ours_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- models from elsewhere: **kwargs factories, timm,
# and the check of one batch that every model passes once built

USER_MODELS = textwrap.dedent('''
    """A user's models: kuangliu's pytorch-cifar style (classes hard-coded) and a **kwargs factory."""
    from torch import nn

    RECEIVED = []


    class Net(nn.Module):
        def __init__(self, num_classes=10, in_channels=3, width=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(width, num_classes))

        def forward(self, x):
            return self.body(x)


    def ResNet18():
        return Net()


    def make(**kw):
        RECEIVED.append(dict(kw))
        return Net(**kw)


    def ignores(**kw):
        return Net()


    def named(classes=10, depth=2):
        return Net(classes)
''')


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """The package `models` with models/resnet.py in a user's project, importable as models.resnet."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "resnet.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("models", "models.resnet"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_a_kwargs_factory_is_given_num_classes_in_channels_and_every_model_arg(user_models, tmp_path):
    import models.resnet as user

    model = build_model("models.resnet:make", 7, 1, 28, model_args={"width": 4})
    assert user.RECEIVED == [{"num_classes": 7, "in_channels": 1, "width": 4}]
    assert model.body[0].out_channels == 4 and model.body[-1].out_features == 7
    # and through training, from the settings a run records
    write_cifar10(tmp_path / "data", per_batch=20, test=20)
    run = cifarlab.train("models.resnet:make", "cifar10", data_dir=tmp_path / "data", epochs=1, batch_size=50,
                         download=False, quiet=True, out=tmp_path / "run", model_args={"width": 6})
    assert user.RECEIVED[-1] == {"num_classes": 10, "in_channels": 3, "width": 6}
    assert run.config["model_args"] == {"width": 6} and run.summary["params"] == 3 * 6 * 9 + 6 + 6 * 10 + 10


def test_a_hard_coded_head_is_refused_in_one_line_before_any_run_folder(user_models, tmp_path):
    """kuangliu's ResNet18() has 10 outputs: on CIFAR-100 it died with "Target 93 is out of bounds" after
    creating a run folder whose resume advice could not work."""
    write_cifar100(tmp_path / "data", train=100, test=20)
    result = run_cli("train", "--model", "models.resnet:ResNet18", "--dataset", "cifar100", "--data-dir",
                     str(tmp_path / "data"), "--epochs", "1", "--out", str(tmp_path / "run"), cwd=user_models)
    assert result.returncode == 2 and "run folder" not in result.stdout
    assert result.stderr == ("cifarlab: error: models.resnet:ResNet18 outputs 10 classes; cifar100 has 100: "
                             "accept num_classes in its factory (cifarlab passes it the dataset's class count)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ref, advice", [
    ("models.resnet:ignores", "its factory was given num_classes=100 and did not use it; pass its own "
                              "class-count argument with --model-arg NAME=100"),
    ("models.resnet:named", "pass its class-count argument with --model-arg NAME=100 (it takes: classes, depth), "
                            "or accept num_classes in its factory"),
])
def test_each_wrong_head_gets_advice_that_can_work(user_models, ref, advice):
    with pytest.raises(UsageError) as refused:
        build_model(ref, 100, dataset="cifar100")
    assert str(refused.value) == f"{ref} outputs 10 classes; cifar100 has 100: {advice}"
    assert count_params(build_model("models.resnet:named", 100, model_args={"classes": 100})) == 3 * 8 * 9 + 8 + 8 * 100 + 100


def test_an_nn_module_with_another_head_or_shape_is_refused_from_python(user_models, tmp_path):
    import models.resnet as user

    write_cifar100(tmp_path / "data", train=100, test=20)
    with pytest.raises(UsageError, match=r"^models\.resnet:Net outputs 10 classes; cifar100 has 100: build the "
                                         r"nn\.Module you pass with 100 outputs"):
        cifarlab.train(user.Net(), "cifar100", data_dir=tmp_path / "data", epochs=1, download=False, quiet=True,
                       out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    spatial = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 3, 8, 1))       # forgot to pool: [2, 10, 4, 4]
    with pytest.raises(UsageError, match=r"turns a batch of \[2, 3, 32, 32\] images into \[2, 10, 4, 4\], not "
                                         r"\[2, 10\] logits"):
        build_model("spatial", 10, supplied=spatial)


def test_model_arg_num_classes_is_refused_as_what_cifarlab_passes_itself(user_models):
    with pytest.raises(UsageError, match="^--model-arg num_classes: cifarlab passes num_classes to model "
                                         "'models.resnet:make' itself, from the dataset; leave it out$"):
        build_model("models.resnet:make", 10, model_args={"num_classes": 10})


class CountsOnTheHost(torch.nn.Module):
    """A forward that reads a number back (no meta kernel can): checked with two real images instead."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        assert x.abs().sum().item() >= 0
        return self.head(self.drop(self.bn(x)).mean((2, 3)))


def test_the_check_changes_no_weight_buffer_mode_or_random_draw():
    model = CountsOnTheHost(10)
    model.bn.eval()                    # a frozen BatchNorm inside a training model keeps its mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator_before = torch.get_rng_state()
    check_output(model, "x:CountsOnTheHost", 10, 3, 32)
    assert model.training and not model.bn.training and model.drop.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), generator_before)
    with pytest.raises(UsageError, match="x:CountsOnTheHost outputs 10 classes; the dataset has 100"):
        check_output(model, "x:CountsOnTheHost", 100, 3, 32, given={}, takes=set())


def timm_resnet18_params(num_classes: int = 10) -> int:
    """The count from timm itself, built separately from cifarlab."""
    timm = pytest.importorskip("timm")
    return sum(p.numel() for p in timm.create_model("resnet18", num_classes=num_classes).parameters())


def test_timm_create_model_trains_a_10_class_resnet18_from_python(tmp_path):
    expected = timm_resnet18_params(10)
    assert expected != timm_resnet18_params(1000)          # the 1000-class head trained before
    write_cifar10(tmp_path / "data", per_batch=8, test=8)
    run = cifarlab.train("timm:create_model", "cifar10", model_args={"model_name": "resnet18"},
                         data_dir=tmp_path / "data", epochs=1, batch_size=40, download=False, quiet=True,
                         precision="fp32", out=tmp_path / "run")
    assert run.summary["params"] == run.config["params"] == expected
    assert run.model()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)    # rebuilt from config.json alone


def test_timm_on_one_channel_images_is_told_its_own_channel_argument():
    """timm names the input channels in_chans: the in_channels cifarlab hands its **kwargs is refused down there,
    so it is left out, and the batch that cannot run says which argument to pass."""
    timm_resnet18_params(10)
    with pytest.raises(UsageError, match=r"^model 'timm:create_model' cannot run a batch of \[2, 1, 28, 28\] images "
                                         r"\(RuntimeError: .*\); its factory refused in_channels=1: pass its own "
                                         r"argument for the input channels with --model-arg \(timm's is in_chans=1\)$"):
        build_model("timm:create_model", 10, 1, 28, model_args={"model_name": "resnet18"})
    model = build_model("timm:create_model", 10, 1, 28, model_args={"model_name": "resnet18", "in_chans": 1})
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10


def readme_block(title: str, language: str) -> str:
    """The first ```language block after the bold paragraph title in README.md."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = readme[readme.index(f"**{title}.**"):]
    return re.search(rf"```{language}\n(.*?)```", after, re.S).group(1)


def test_the_readme_timm_example_trains_the_10_class_resnet18_it_prints(tmp_path):
    """The README's command, on a few synthetic images for one epoch: its parameter count is timm's own."""
    expected = timm_resnet18_params(10)
    block = readme_block("timm and other libraries", "bash")
    command = shlex.split(block.splitlines()[0])
    assert command[:2] == ["cifarlab", "train"] and f"{expected:,} parameters" in block
    args = command[1:]
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--out") + 1] = str(tmp_path / "run")
    write_cifar10(tmp_path / "data", per_batch=8, test=8)
    result = run_cli(*args, "--data-dir", str(tmp_path / "data"), "--batch-size", "40", "--precision", "fp32",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"timm:create_model on cifar10 (40 train, 8 test), {expected:,} parameters" in result.stdout
    assert f"Total Parameters: {expected:,}" in result.stdout
    python = readme_block("timm and other libraries", "python")
    assert 'cifarlab.train("timm:create_model", "cifar10", model_args={"model_name": "resnet18"}' in python


def test_an_import_path_that_is_not_there_gets_advice_for_where_it_was_typed(user_models):
    """From Python the class itself can be passed; on the command line it cannot."""
    from cifarlab.models.registry import import_object

    result = run_cli("train", "--model", "models.resnet:Nope", "--dataset", "cifar10", "--epochs", "1",
                     cwd=user_models)
    assert result.returncode == 2
    assert result.stderr == ("cifarlab: error: model models.resnet:Nope: 'models.resnet' has no attribute 'Nope' "
                             "that can be imported; check the spelling, and define it at the top level of the module "
                             "models.resnet\n")
    with pytest.raises(UsageError, match=r"has no attribute 'Nope' that can be imported; pass the class itself "
                                         r"\(model=\.\.\.\)$"):
        cifarlab.train("models.resnet:Nope", "cifar10", epochs=1)
    with pytest.raises(UsageError) as gone:
        import_object("__main__:GoneNet")          # a notebook's class, asked for by `cifarlab evaluate`
    assert "pass the class again, e.g. cifarlab.load_run(path, model=GoneNet)" in str(gone.value)
    assert gone.value.cli.startswith("model __main__:GoneNet was defined in a notebook or script (__main__), which "
                                     "the command line cannot import: from Python, cifarlab.load_run(path, "
                                     "model=GoneNet); or move GoneNet into a module")


def _before_the_rename(state: dict) -> dict:
    """resnet18's keys as cifarlab saved them before torchvision's names: stem.0/stem.1, layers.0-7 (two blocks
    a stage), shortcut inside a block, head.2 for the classifier."""
    def old(key):
        first, rest = key.split(".", 1)
        if first in ("conv1", "bn1"):
            return f"stem.{0 if first == 'conv1' else 1}.{rest}"
        if first == "fc":
            return f"head.2.{rest}"
        block, rest = rest.split(".", 1)
        return f"layers.{2 * (int(first[-1]) - 1) + int(block)}.{rest.replace('downsample.', 'shortcut.')}"
    return {old(k): v for k, v in state.items()}


def test_a_checkpoint_with_the_old_resnet_layer_names_is_refused_with_the_rename(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=8, test=8)
    run = cifarlab.train("resnet18", "cifar10", data_dir=tmp_path / "data", epochs=1, batch_size=40, download=False,
                         quiet=True, precision="fp32", out=tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        path = run.path / "checkpoints" / name
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"] = _before_the_rename(checkpoint["model"])
        torch.save(checkpoint, path)
    rename = ("a checkpoint from before cifarlab renamed ResNet layers to torchvision's (stem -> conv1/bn1, "
              "layers.N -> layer1-layer4, shortcut/projection -> downsample, head -> fc): retrain it")
    result = run_cli("evaluate", str(run.path))
    assert result.returncode == 2
    assert result.stderr == f"cifarlab: error: {run.path / 'checkpoints' / 'best.pt'}: {rename}\n"
    with pytest.raises(UsageError) as error:             # --resume meets the same line, for last.pt
        cifarlab.resume(run.path, quiet=True)
    assert str(error.value) == f"{run.path / 'checkpoints' / 'last.pt'}: {rename}"


def test_only_old_resnet_names_meet_the_rename_line():
    """A ViT's or fast94's own `head`, loaded into resnet18, is another model: the generic line, not the rename."""
    from cifarlab.models.renames import has_old_layer_names

    with torch.device("meta"):
        keys = {name: build_model(name, 10).state_dict().keys()
                for name in ("resnet18", "preact-resnet18", "wrn-16-8", "vit-tiny", "fast94")}
    old_resnet18 = _before_the_rename(dict.fromkeys(keys["resnet18"]))
    old_preact = {"stem.weight", "layers.0.bn1.weight", "layers.2.projection.weight", "head.0.weight", "head.4.bias"}
    assert has_old_layer_names(keys["resnet18"], old_resnet18)
    assert has_old_layer_names(keys["preact-resnet18"], old_preact)
    assert has_old_layer_names(keys["wrn-16-8"], old_preact)
    assert not has_old_layer_names(keys["resnet18"], keys["resnet18"])
    assert not has_old_layer_names(keys["resnet18"], keys["vit-tiny"])
    assert not has_old_layer_names(keys["resnet18"], keys["fast94"])
    assert not has_old_layer_names(keys["vit-tiny"], old_resnet18)      # the model itself has no torchvision names
