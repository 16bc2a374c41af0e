"""Wide ResNets for 32x32 inputs (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 3x3 conv to 16 channels, then three groups of n = (d - 4) / 6
pre-activation blocks at widths 16k, 32k, 64k (the second and third groups
start with stride 2), BN -> ReLU, global average pool, FC. Each block is
B(3,3) with dropout between the convs:

    BN -> ReLU -> conv3x3 -> BN -> ReLU -> dropout -> conv3x3,  + shortcut

The shortcut is the identity, or a 1x1 conv on the pre-activated input where
the width or stride changes. Dropout is the paper's 0.3 when switched on
(their best CIFAR results), 0 when off.

    wrn-16-8:  n = 2, widths 128/256/512
    wrn-28-10: n = 4, widths 160/320/640
"""

from torch import nn

from cifarlab.models.preact_resnet import PreActBlock, norm

PAPER_DROPOUT = 0.3


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3,
                 batchnorm: bool = True, dropout: bool = True):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n, rate = (depth - 4) // 6, PAPER_DROPOUT if dropout else 0.0
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=not batchnorm)
        layers, cin = [], 16
        for i, cout in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for j in range(n):
                layers.append(PreActBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, batchnorm, rate))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(norm(cin, batchnorm), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def wrn_16_8(**kwargs) -> WideResNet:
    return WideResNet(16, 8, **kwargs)


def wrn_28_10(**kwargs) -> WideResNet:
    return WideResNet(28, 10, **kwargs)
