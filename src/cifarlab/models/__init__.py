"""Model registry: name -> builder(num_classes, in_channels, image_size, options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models.basic_cnn import BasicCNN
from cifarlab.models.deeper_cnn import DeeperCNN
from cifarlab.models.init import INITS, initialize
from cifarlab.models.resnet import resnet18


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str                  # as printed in the article's summary blocks
    build: Callable[..., nn.Module]
    default_init: str           # what the article used
    min_size: int               # smallest input side the architecture accepts
    summary: str


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
}


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
