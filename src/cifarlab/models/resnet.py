"""ResNet-18 for 32x32 inputs (He et al. 2015, CIFAR stem).

3x3 stride-1 stem with no max-pool, BasicBlocks 2-2-2-2 at 64/128/256/512
channels, 1x1 projection shortcuts where the shape changes, global average
pool, one FC layer. `out = F(x) + shortcut(x)` is the residual connection.
"""

from torch import nn


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        # Without BN the convs get a bias back, as a plain conv layer would have.
        bias = not batchnorm
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = _norm(cout, batchnorm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = _norm(cout, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), _norm(cout, batchnorm))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 batchnorm: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=not batchnorm),
                                  _norm(64, batchnorm), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, batchnorm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def resnet18(**kwargs) -> ResNet:
    return ResNet([2, 2, 2, 2], **kwargs)
