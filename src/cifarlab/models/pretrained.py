"""ResNet-18 with torchvision's ImageNet weights, adapted to 32x32 inputs (the article's
`resnet18(weights=ResNet18_Weights.DEFAULT)` route, done so it suits CIFAR).

ImageNet's stem (7x7 stride-2 conv + max-pool) would shrink a 32x32 image to 8x8 before the first
block. The adapted stem is a 3x3 stride-1 conv without max-pool, initialised from the pretrained
7x7 kernels resampled to 3x3 (area average, shifted so each kernel keeps its sum, i.e. its
response to flat regions); the classifier is new. Every other weight is ImageNet's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models.registry import register_model

WEIGHTS_FILE = "resnet18-f37072fd.pth"     # torchvision's ResNet18_Weights.IMAGENET1K_V1 (= DEFAULT)
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"


def resnet18_imagenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The architecture only (random init); `load_imagenet_weights` fills it."""
    import torchvision   # here, not at the top: its import would slow every command (BENCHMARKS.md)
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Linear(512, num_classes)
    return model


def weights_path() -> Path:
    """Where torchvision keeps downloaded weights: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def fetch_imagenet_state(download: bool) -> dict:
    path = weights_path()
    if not path.is_file():
        if not download:
            raise UsageError(f"ImageNet weights for resnet18-imagenet not found and --no-download given: put "
                             f"{WEIGHTS_FILE} (from {WEIGHTS_URL}) in {path.parent}")
        import torchvision
        try:
            torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # noqa: BLE001 - offline, proxy, bad hash: all end in the same advice
            raise UsageError(f"could not download ImageNet weights for resnet18-imagenet ({type(e).__name__}: "
                             f"{e}); put {WEIGHTS_FILE} (from {WEIGHTS_URL}) in {path.parent}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{path}: unreadable weights file ({type(e).__name__}: {e})") from None


def adapt_stem(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    """64x3x7x7 ImageNet kernels -> 64 x in_channels x 3x3, each kernel keeping its sum."""
    small = F.adaptive_avg_pool2d(kernel, 3)   # the 7x7 pattern at 3x3 (windows overlap by one pixel)
    # shift each kernel so its sum is exactly the original's: same response to a flat region
    small = small + (kernel.sum((2, 3), keepdim=True) - small.sum((2, 3), keepdim=True)) / 9
    if in_channels == 1:               # grayscale: the RGB kernels' sum sees a gray pixel the same way
        small = small.sum(1, keepdim=True)
    return small


def load_imagenet_weights(model: nn.Module, download: bool = True) -> nn.Module:
    """ImageNet's weights by their own names: torchvision's resnet18 and ours (models/resnet.py) share them."""
    state = fetch_imagenet_state(download)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(("fc.", "conv1."))]
    if missing or "conv1.weight" not in state:
        raise UsageError(f"{weights_path()}: not torchvision ResNet-18 weights (missing {missing[:3] or 'conv1'})")
    with torch.no_grad():
        for name, value in own.items():
            if name.startswith("fc."):
                continue                                     # a new head for our classes
            source = state[name]
            if name == "conv1.weight":
                source = adapt_stem(source, value.shape[1])
            if source.shape != value.shape:
                raise UsageError(f"{weights_path()}: {name} has shape {tuple(source.shape)}, "
                                 f"expected {tuple(value.shape)}")
            value.copy_(source)
    return model


# Registered last, after its weight loader: resnet18 counts, torchvision's layout and ImageNet weights.
register_model("resnet18-imagenet", title="ResNet-18 (ImageNet)", min_size=8, switches=(),
               pretrained=load_imagenet_weights, pretrained_source=WEIGHTS_URL,
               summary="torchvision ResNet-18 with ImageNet weights; 3x3 stride-1 stem from the 7x7 kernels, "
                       "no max-pool")(resnet18_imagenet)
