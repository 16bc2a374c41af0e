"""ResNet-18/34/50 for 32x32 inputs (He et al. 2015, CIFAR stem).

3x3 stride-1 stem with no max-pool (a 32x32 image has no pixels to spare),
four stages at 64/128/256/512 channels, the first block of stages 2-4 halving
the resolution, global average pool, one FC layer. `out = F(x) + shortcut(x)`
is the residual connection; the shortcut is a 1x1 projection (conv + BN) where
the shape changes, the identity elsewhere.

    resnet18: BasicBlock (3x3, 3x3)            x 2-2-2-2
    resnet34: BasicBlock (3x3, 3x3)            x 3-4-6-3
    resnet50: Bottleneck (1x1, 3x3, 1x1 x 4)   x 3-4-6-3, so the head sees 2048 features
"""

from torch import nn

from cifarlab.models.registry import register_model


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _projection(cin: int, cout: int, stride: int, batchnorm: bool) -> nn.Module:
    """Identity where the shape is unchanged, else a strided 1x1 conv + BN (option B of the paper)."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not batchnorm), _norm(cout, batchnorm))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        # Without BN the convs get a bias back, as a plain conv layer would have.
        bias = not batchnorm
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=bias)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = _norm(planes, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, planes, stride, batchnorm)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand to 4 x planes channels."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        bias = not batchnorm
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=bias)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=bias)
        self.bn2 = _norm(planes, batchnorm)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=bias)
        self.bn3 = _norm(cout, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride, batchnorm)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 batchnorm: bool = True, block: type[nn.Module] = BasicBlock):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=not batchnorm),
                                  _norm(64, batchnorm), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            for j in range(n):
                layers.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, batchnorm))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        # Adaptive pooling, not avg_pool2d(4): any input size the stride plan allows works.
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


# min_size 8: three stride-2 stages still leave the last one >= 1 pixel.
@register_model("resnet18", title="ResNet-18", default_init="kaiming", min_size=8,
                switches=("batchnorm", "init"),
                summary="CIFAR ResNet-18: 3x3 stem, BasicBlocks 2-2-2-2 (64-512), projection shortcuts")
def resnet18(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels, batchnorm, BasicBlock)


@register_model("resnet34", title="ResNet-34", default_init="kaiming", min_size=8,
                switches=("batchnorm", "init"),
                summary="CIFAR ResNet-34: 3x3 stem, BasicBlocks 3-4-6-3 (64-512), projection shortcuts")
def resnet34(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, batchnorm, BasicBlock)


@register_model("resnet50", title="ResNet-50", default_init="kaiming", min_size=8,
                switches=("batchnorm", "init"),
                summary="CIFAR ResNet-50: 3x3 stem, Bottlenecks 3-4-6-3 (64-512, x4 expansion)")
def resnet50(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, batchnorm, Bottleneck)
