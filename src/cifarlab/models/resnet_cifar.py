"""The CIFAR ResNets of He et al. 2015, section 4.2: ResNet-20, 32, 44, 56 and 110.

    conv3x3 (16) -> BN -> ReLU
    3 stages of n BasicBlocks at 16, 32, 64 filters on 32x32, 16x16, 8x8 maps
    (the first block of stages 2 and 3 has stride 2)
    global average pool -> FC

6n + 2 weighted layers: the stem, 2 convs per block, the FC. The shortcut is
option A of the paper: the identity, and where the shape changes, the input
subsampled by 2 and zero-padded to the new width, so shortcuts add no
parameters. With skip=False the same layers run without any shortcut: the
"plain" nets of the paper's Fig. 6, whose counts equal the residual ones.

The blocks are resnet.py's BasicBlock with the option-A shortcut, and the layers carry our other
ResNets' names: conv1, bn1, layer1-layer3, fc (in a block conv1/bn1/conv2/bn2/downsample).
"""

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.models.registry import register_model
from cifarlab.models.resnet import BasicBlock, _norm

WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option A: take every second pixel and append zero channels up to `cout` (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        # zeros split over both sides of the channel axis, as the paper's Torch code pads
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def option_a(cin: int, cout: int, stride: int, batchnorm: bool, skip: bool) -> nn.Module | None:
    """The shortcut where the shape changes: PadShortcut; None (the identity, or no shortcut when skip is off)."""
    return PadShortcut(cin, cout, stride) if skip and (stride != 1 or cin != cout) else None


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True,
                 skip: bool = True):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=not batchnorm)
        self.bn1 = _norm(WIDTHS[0], batchnorm)
        self.relu = nn.ReLU(inplace=True)
        cin = WIDTHS[0]
        for i, cout in enumerate(WIDTHS):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, batchnorm, skip,
                                 shortcut=option_a) for j in range(n)]
            cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    # min_size 4: two stride-2 stages still leave the last one >= 1 pixel.
    @register_model(f"resnet{depth}", title=f"ResNet-{depth}", default_init="kaiming", min_size=4,
                    switches=("batchnorm", "skip", "init"),
                    summary=f"He et al.'s CIFAR ResNet-{depth}: 3 stages of {n} BasicBlocks (16-32-64), "
                            "option-A shortcuts (--no-skip: plain-" + str(depth) + ")")
    def build(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, skip: bool = True):
        return CifarResNet(depth, num_classes, in_channels, batchnorm, skip)


DEPTHS = (20, 32, 44, 56, 110)
for _depth in DEPTHS:
    _register(_depth)
