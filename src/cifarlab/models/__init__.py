"""Model registry: name -> builder(num_classes, in_channels, image_size, options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models.basic_cnn import BasicCNN
from cifarlab.models.deeper_cnn import DeeperCNN
from cifarlab.models.fast94 import fast94
from cifarlab.models.init import INITS, initialize
from cifarlab.models.pretrained import load_imagenet_weights, resnet18_imagenet
from cifarlab.models.preact_resnet import preact_resnet18
from cifarlab.models.resnet import resnet18, resnet34, resnet50
from cifarlab.models.vgg import vgg16_bn
from cifarlab.models.vit import vit_tiny
from cifarlab.models.wide_resnet import wrn_16_8, wrn_28_10


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str                  # as printed in the article's summary blocks
    build: Callable[..., nn.Module]
    default_init: str           # what the article used
    min_size: int               # smallest input side the architecture accepts
    summary: str
    pretrained: bool = False    # weights come from elsewhere (load_pretrained), not from init


MODELS: dict[str, ModelSpec] = {
    "basic-cnn": ModelSpec(
        "basic-cnn", "Basic CNN",
        lambda n, c, s, bn, do: BasicCNN(n, c, s, dropout=do),
        "default", 4, "2 conv blocks (32, 64), FC 128, dropout 0.25"),
    "deeper-cnn": ModelSpec(
        "deeper-cnn", "Deeper CNN",
        lambda n, c, s, bn, do: DeeperCNN(n, c, s, batchnorm=bn, dropout=do),
        "kaiming", 16, "4 VGG blocks (64-512) with BatchNorm, Dropout2d 0.25, FC 1024-512, dropout 0.5"),
    "resnet18": ModelSpec(
        "resnet18", "ResNet-18",
        lambda n, c, s, bn, do: resnet18(num_classes=n, in_channels=c, batchnorm=bn),
        "kaiming", 8, "CIFAR ResNet-18: 3x3 stem, BasicBlocks 2-2-2-2 (64-512), projection shortcuts"),
    # The zoo beyond the article. min_size: the smallest side whose last stage still sees >= 1 pixel
    # (three stride-2 stages for the ResNets, two for WRN, five max-pools for VGG, one patch for ViT).
    "resnet34": ModelSpec(
        "resnet34", "ResNet-34",
        lambda n, c, s, bn, do: resnet34(num_classes=n, in_channels=c, batchnorm=bn),
        "kaiming", 8, "CIFAR ResNet-34: 3x3 stem, BasicBlocks 3-4-6-3 (64-512), projection shortcuts"),
    "resnet50": ModelSpec(
        "resnet50", "ResNet-50",
        lambda n, c, s, bn, do: resnet50(num_classes=n, in_channels=c, batchnorm=bn),
        "kaiming", 8, "CIFAR ResNet-50: 3x3 stem, Bottlenecks 3-4-6-3 (64-512, x4 expansion)"),
    "preact-resnet18": ModelSpec(
        "preact-resnet18", "PreAct ResNet-18",
        lambda n, c, s, bn, do: preact_resnet18(num_classes=n, in_channels=c, batchnorm=bn),
        "kaiming", 8, "pre-activation ResNet-18: BN-ReLU-conv BasicBlocks 2-2-2-2 (64-512)"),
    "wrn-16-8": ModelSpec(
        "wrn-16-8", "WRN-16-8",
        lambda n, c, s, bn, do: wrn_16_8(num_classes=n, in_channels=c, batchnorm=bn, dropout=do),
        "kaiming", 4, "Wide ResNet 16-8: pre-activation, 2 blocks per group, widths 16/128/256/512, dropout 0.3"),
    "wrn-28-10": ModelSpec(
        "wrn-28-10", "WRN-28-10",
        lambda n, c, s, bn, do: wrn_28_10(num_classes=n, in_channels=c, batchnorm=bn, dropout=do),
        "kaiming", 4, "Wide ResNet 28-10: pre-activation, 4 blocks per group, widths 16/160/320/640, dropout 0.3"),
    "vgg16-bn": ModelSpec(
        "vgg16-bn", "VGG-16-BN",
        lambda n, c, s, bn, do: vgg16_bn(num_classes=n, in_channels=c, batchnorm=bn),
        "kaiming", 32, "CIFAR VGG-16 with BatchNorm: 13 conv3x3 (64-512), 5 max-pools, FC 512 -> classes"),
    "vit-tiny": ModelSpec(
        "vit-tiny", "ViT-Tiny",
        lambda n, c, s, bn, do: vit_tiny(num_classes=n, in_channels=c, image_size=s, dropout=do),
        "default", 4, "Vision Transformer: 4x4 patches, dim 192, 9 blocks, 3 heads, MLP 768, class token"),
    "fast94": ModelSpec(
        "fast94", "fast94",
        lambda n, c, s, bn, do: fast94(num_classes=n, in_channels=c),
        "default", 8, "speed-run net: frozen 2x2 whitening stem, 3 stages conv-pool-BN-GELU-conv-BN-GELU "
                      "(64, 256, 256), max-pool, scaled linear head"),
}

# torchvision's ImageNet ResNet-18, adapted to 32x32 (models/pretrained.py); the same 11,173,962
# parameters on CIFAR-10 as our resnet18, but with ImageNet's torchvision layout and weights.
MODELS["resnet18-imagenet"] = ModelSpec(
    "resnet18-imagenet", "ResNet-18 (ImageNet)",
    lambda n, c, s, bn, do: resnet18_imagenet(num_classes=n, in_channels=c),
    "default", 8, "torchvision ResNet-18 with ImageNet weights; 3x3 stride-1 stem from the 7x7 kernels, no max-pool",
    pretrained=True)



def model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`, or a one-line error listing the valid names."""
    if name not in MODELS:
        raise UsageError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
    return MODELS[name]


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                batchnorm: bool = True, init: str = "auto", dropout: bool = True) -> nn.Module:
    """Build a registered model; `init="auto"` uses the scheme the article used for it."""
    spec = model_spec(name)
    if image_size < spec.min_size:
        raise UsageError(f"model '{name}' needs inputs of at least {spec.min_size}x{spec.min_size}, "
                         f"got {image_size}x{image_size}")
    if init not in INITS + ("auto",):
        raise UsageError(f"unknown init '{init}' (choose from auto, {', '.join(INITS)})")
    model = spec.build(num_classes, in_channels, image_size, batchnorm, dropout)
    return initialize(model, spec.default_init if init == "auto" else init)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_pretrained(name: str, model: nn.Module, download: bool = True) -> nn.Module:
    """Fill a pretrained model's weights (after build_model); a no-op for models trained from scratch."""
    if name == "resnet18-imagenet":
        return load_imagenet_weights(model, download)
    return model
