"""The model zoo beyond the article: exact parameter counts (pinned, summed from the layer shapes, checked against
torchvision), the published sizes, the switches, real-data steps."""

from collections import Counter

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.vision_transformer import VisionTransformer

from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, count_params

ZOO = ["resnet34", "resnet50", "preact-resnet18", "wrn-16-8", "wrn-28-10", "vgg16-bn", "vit-tiny"]

# (CIFAR-10 3x32x32, CIFAR-100 3x32x32, MNIST 1x28x28 or None where the model cannot take 28x28).
EXPECTED = {
    "resnet34": (21_282_122, 21_328_292, 21_280_970),
    "resnet50": (23_520_842, 23_705_252, 23_519_690),
    "preact-resnet18": (11_172_170, 11_218_340, 11_171_018),
    "wrn-16-8": (10_961_370, 11_007_540, 10_961_082),
    "wrn-28-10": (36_479_194, 36_536_884, 36_478_906),
    "vgg16-bn": (14_728_266, 14_774_436, None),
    "vit-tiny": (4_028_170, 4_045_540, 4_019_146),
}

# Sizes published for these CIFAR architectures (10 classes), in millions, to one decimal: the papers' tables
# (WRN) and the common CIFAR reference implementations (ResNets, VGG). PreAct ResNet-18 here has the paper's
# final BN-ReLU, which kuangliu/pytorch-cifar's 11,171,146 lacks (+1,024).
PUBLISHED_MILLIONS = {"resnet34": 21.3, "resnet50": 23.5, "preact-resnet18": 11.2, "wrn-16-8": 11.0,
                      "wrn-28-10": 36.5, "vgg16-bn": 14.7}


# The counts again, from the layer shapes the papers publish: a conv k x k from cin to cout channels holds
# cin*cout*k*k weights (+ cout biases where it has them), a BatchNorm or LayerNorm over c channels 2c,
# a Linear i -> o i*o + o. Convs followed by BN have no bias, except in VGG (as in torchvision's vgg16_bn).
def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def norm(c):
    return 2 * c


def linear(i, o):
    return i * o + o


def resnet_basic(blocks, classes, cin):
    """He et al. 2015, CIFAR stem: conv3x3-64 + BN, then (conv3x3 + BN) x 2 per block, 1x1 conv + BN
    projection where the width changes, FC 512 -> classes."""
    total, c = conv(cin, 64, 3) + norm(64), 64
    for n, planes in zip(blocks, (64, 128, 256, 512)):
        for _ in range(n):
            total += conv(c, planes, 3) + norm(planes) + conv(planes, planes, 3) + norm(planes)
            total += conv(c, planes, 1) + norm(planes) if c != planes else 0
            c = planes
    return total + linear(512, classes)


def resnet_bottleneck(blocks, classes, cin):
    """The same stem; blocks 1x1 (planes) -> 3x3 (planes) -> 1x1 (4 x planes), each + BN; FC 2048 -> classes."""
    total, c = conv(cin, 64, 3) + norm(64), 64
    for n, planes in zip(blocks, (64, 128, 256, 512)):
        for _ in range(n):
            out = 4 * planes
            total += conv(c, planes, 1) + conv(planes, planes, 3) + conv(planes, out, 1)
            total += norm(planes) + norm(planes) + norm(out)
            total += conv(c, out, 1) + norm(out) if c != out else 0
            c = out
    return total + linear(2048, classes)


def preact(blocks, widths, stem, classes, cin):
    """He et al. 2016 / Zagoruyko & Komodakis 2016: a bare conv3x3 stem, blocks BN-conv3x3-BN-conv3x3 with a
    1x1 conv (no BN) projection where the width changes, a final BN, FC -> classes."""
    total, c = conv(cin, stem, 3), stem
    for n, w in zip(blocks, widths):
        for _ in range(n):
            total += norm(c) + conv(c, w, 3) + norm(w) + conv(w, w, 3)
            total += conv(c, w, 1) if c != w else 0
            c = w
    return total + norm(c) + linear(c, classes)


def vgg16_bn(classes, cin):
    """Configuration D: 13 conv3x3 (with bias) + BN at 64 64 | 128 128 | 256 x 3 | 512 x 3 | 512 x 3; FC 512."""
    total, c = 0, cin
    for w in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512):
        total, c = total + conv(c, w, 3, bias=True) + norm(w), w
    return total + linear(512, classes)


def vit(classes, cin, size, dim=192, depth=9, patch=4):
    """Patch embedding (a conv patch x patch with bias), class token, one position per patch and the class token,
    `depth` blocks of LayerNorm + qkv + projection + LayerNorm + MLP dim -> 4 dim -> dim, final LayerNorm, FC."""
    tokens = (size // patch) ** 2
    attention = norm(dim) + linear(dim, 3 * dim) + linear(dim, dim)
    mlp = norm(dim) + linear(dim, 4 * dim) + linear(4 * dim, dim)
    embedding = conv(cin, dim, patch, bias=True) + dim + (tokens + 1) * dim
    return embedding + depth * (attention + mlp) + norm(dim) + linear(dim, classes)


FROM_LAYER_SHAPES = {
    "resnet34": lambda classes, cin, size: resnet_basic([3, 4, 6, 3], classes, cin),
    "resnet50": lambda classes, cin, size: resnet_bottleneck([3, 4, 6, 3], classes, cin),
    "preact-resnet18": lambda classes, cin, size: preact([2, 2, 2, 2], (64, 128, 256, 512), 64, classes, cin),
    "wrn-16-8": lambda classes, cin, size: preact([2] * 3, (16 * 8, 32 * 8, 64 * 8), 16, classes, cin),
    "wrn-28-10": lambda classes, cin, size: preact([4] * 3, (16 * 10, 32 * 10, 64 * 10), 16, classes, cin),
    "vgg16-bn": lambda classes, cin, size: vgg16_bn(classes, cin),
    "vit-tiny": lambda classes, cin, size: vit(classes, cin, size),
}


def _count(name: str, classes: int, channels: int, size: int) -> int:
    # On the meta device nothing is allocated or initialised: counting 36M parameters costs nothing.
    with torch.device("meta"):
        return count_params(build_model(name, classes, channels, size))


def test_zoo_is_registered_with_a_title_summary_and_init():
    for name in ZOO:
        spec = MODELS[name]
        assert spec.name == name and spec.title and spec.summary
        assert spec.default_init in ("kaiming", "xavier", "default")


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_is_exact_for_cifar10_cifar100_and_mnist(name):
    cifar10, cifar100, mnist = EXPECTED[name]
    assert _count(name, 10, 3, 32) == cifar10
    assert _count(name, 100, 3, 32) == cifar100
    if mnist is None:
        with pytest.raises(UsageError, match=f"at least {MODELS[name].min_size}x"):
            build_model(name, 10, 1, 28)
    else:
        assert _count(name, 10, 1, 28) == mnist


@pytest.mark.parametrize("name", ZOO)
def test_pinned_counts_are_the_sum_of_the_published_layer_shapes(name):
    for (classes, cin, size), pinned in zip([(10, 3, 32), (100, 3, 32), (10, 1, 28)], EXPECTED[name]):
        if pinned is not None:
            assert FROM_LAYER_SHAPES[name](classes, cin, size) == pinned


@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_parameter_count_matches_the_published_architecture(name):
    assert round(_count(name, 10, 3, 32) / 1e6, 1) == PUBLISHED_MILLIONS[name]


def _shapes(model):
    return Counter(tuple(p.shape) for p in model.parameters())


def _torchvision_resnet(factory, classes):
    """torchvision's ImageNet ResNet with the CIFAR stem: conv3x3 stride 1 instead of conv7x7 stride 2 + max-pool."""
    model = factory(num_classes=classes)
    model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    return model


def _torchvision_vgg16_bn(classes):
    """torchvision's vgg16_bn with the CIFAR head: 1x1 features, one Linear(512, classes)."""
    model = torchvision.models.vgg16_bn(num_classes=classes)
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(512, classes)
    return model


TORCHVISION = {
    "resnet34": lambda: _torchvision_resnet(torchvision.models.resnet34, 100),
    "resnet50": lambda: _torchvision_resnet(torchvision.models.resnet50, 100),
    "vgg16-bn": lambda: _torchvision_vgg16_bn(100),
    "vit-tiny": lambda: VisionTransformer(image_size=32, patch_size=4, num_layers=9, num_heads=3, hidden_dim=192,
                                          mlp_dim=768, num_classes=100),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_every_layer_has_the_shape_of_torchvisions_implementation(name):
    """Same multiset of parameter shapes as torchvision's model of that architecture (CIFAR stem / head swapped in)."""
    with torch.device("meta"):
        assert _shapes(build_model(name, 100)) == _shapes(TORCHVISION[name]())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_state_dicts_exchange_with_torchvisions_resnets(name):
    """torchvision's names and order, key for key: each model loads the other's weights and computes the same."""
    factory = getattr(torchvision.models, name)
    torch.manual_seed(0)
    ours, theirs = build_model(name, 10).eval(), _torchvision_resnet(factory, 10).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    x = torch.randn(2, 3, 32, 32)
    theirs.load_state_dict(ours.state_dict())         # ours -> torchvision
    torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    torch.manual_seed(1)
    theirs = _torchvision_resnet(factory, 10).eval()
    ours.load_state_dict(theirs.state_dict())         # torchvision -> ours
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,stages", [("preact-resnet18", 4), ("wrn-16-8", 3)])
def test_pre_activation_resnets_share_the_resnets_names(name, stages):
    """conv1, layerN.B.{bn1,conv1,bn2,conv2,downsample}, fc as in resnet18; `bn` is the final pre-activation BN."""
    with torch.device("meta"):
        keys = build_model(name, 10).state_dict().keys()
    assert list(dict.fromkeys(k.split(".")[0] for k in keys)) == \
        ["conv1", *(f"layer{i}" for i in range(1, stages + 1)), "bn", "fc"]
    assert {k.split(".", 2)[2] for k in keys if k.startswith("layer2.0.")} == {
        "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked", "conv1.weight",
        "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked", "conv2.weight",
        "downsample.weight"}


@pytest.mark.parametrize("name", [n for n in ZOO if n != "vit-tiny"])
def test_no_batchnorm_removes_every_norm_layer(name):
    with torch.device("meta"):
        model = build_model(name, 10, batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_vit_has_layernorms_and_refuses_the_batchnorm_switch_it_does_not_have():
    with torch.device("meta"):
        model = build_model("vit-tiny", 10)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 2 * 9 + 1
    with pytest.raises(UsageError, match="--no-batchnorm: model 'vit-tiny' has no batchnorm switch"):
        build_model("vit-tiny", 10, batchnorm=False)


def test_pre_activation_blocks_without_bn_leave_the_identity_path_untouched():
    """Without BN the first ReLU meets the block's input directly; it must not overwrite it in place."""
    from cifarlab.models.preact_resnet import PreActBlock

    # the pre-activation ResNet's block, and the same block as the Wide ResNets use it (dropout slot)
    for block in (PreActBlock(4, 4, batchnorm=False), PreActBlock(4, 4, 1, batchnorm=False, dropout=0.0)):
        x = torch.randn(1, 4, 5, 5)
        before = x.clone()
        out = block(x)
        assert torch.equal(x, before)
        torch.testing.assert_close(out, x + block.conv2(block.relu(block.conv1(block.relu(before)))))


@pytest.mark.parametrize("name,rate", [("wrn-16-8", 0.3), ("wrn-28-10", 0.3), ("vit-tiny", 0.1)])
def test_dropout_switch_sets_the_documented_rate_or_zero(name, rate):
    def rates(**kw):
        with torch.device("meta"):
            return {m.p for m in build_model(name, 10, **kw).modules() if isinstance(m, torch.nn.Dropout)}
    assert rates() == {rate}
    assert rates(dropout=False) == {0.0}


# The heaviest models (several GFLOPs per image) train on 4 images to keep the suite fast on 2 CPU cores,
# and still take 6-18 s each there: they are marked slow. PreAct ResNet-18 and ViT-Tiny (2-4 s) stay quick.
SMOKE_BATCH = {"resnet34": 4, "resnet50": 4, "wrn-16-8": 4, "wrn-28-10": 4}
SLOW_STEPS = {"resnet34", "resnet50", "wrn-16-8", "wrn-28-10", "vgg16-bn"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_STEPS else n for n in ZOO])
def test_two_adam_steps_on_a_real_batch_lower_a_finite_loss(name, real_batch):
    x, y = real_batch(SMOKE_BATCH.get(name, 8))
    x = x.contiguous(memory_format=torch.channels_last)          # as cifarlab trains
    torch.manual_seed(0)
    model = build_model(name, 10).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert torch.isfinite(torch.tensor([first, after])).all()
    assert after < first
