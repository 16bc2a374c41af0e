"""ResNet-18/34/50 for 32x32 inputs (He et al. 2015, CIFAR stem).

3x3 stride-1 stem with no max-pool (a 32x32 image has no pixels to spare),
four stages at 64/128/256/512 channels, the first block of stages 2-4 halving
the resolution, global average pool, one FC layer. `out = F(x) + shortcut(x)`
is the residual connection; the shortcut is a 1x1 projection (conv + BN,
`downsample`) where the shape changes, the identity elsewhere. With skip=False
(`--no-skip`) the same layers run with no shortcut at all, identity or
projection: the plain net, whose strided convs still change the shape.

The layers carry torchvision's names (conv1, bn1, layer1-layer4, fc; in a block
conv1/bn1/conv2/bn2[/conv3/bn3]/downsample), so a state dict loads into
torchvision's resnet18/34/50 with the CIFAR stem swapped in, and back.

    resnet18: BasicBlock (3x3, 3x3)            x 2-2-2-2
    resnet34: BasicBlock (3x3, 3x3)            x 3-4-6-3
    resnet50: Bottleneck (1x1, 3x3, 1x1 x 4)   x 3-4-6-3, so the head sees 2048 features
"""

from torch import nn

from cifarlab.models.registry import register_model


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _projection(cin: int, cout: int, stride: int, batchnorm: bool, skip: bool) -> nn.Module | None:
    """None (the identity, or no shortcut in a plain net) where the shape is unchanged or skip is off, else a
    strided 1x1 conv + BN (option B of the paper)."""
    if not skip or (stride == 1 and cin == cout):
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not batchnorm), _norm(cout, batchnorm))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, batchnorm: bool = True, skip: bool = True,
                 shortcut=None):
        """shortcut: (cin, cout, stride, batchnorm, skip) -> the module on the shortcut where the shape changes,
        or None; default the projection (option B). He et al.'s CIFAR nets pass their option A."""
        super().__init__()
        # Without BN the convs get a bias back, as a plain conv layer would have.
        bias = not batchnorm
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=bias)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = _norm(planes, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.skip = skip
        self.downsample = (shortcut or _projection)(cin, planes, stride, batchnorm, skip)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand to 4 x planes channels."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, batchnorm: bool = True, skip: bool = True):
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
        self.skip = skip
        self.downsample = _projection(cin, cout, stride, batchnorm, skip)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.skip:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 batchnorm: bool = True, block: type[nn.Module] = BasicBlock, skip: bool = True):
        super().__init__()
        # The CIFAR stem: torchvision's conv1 at 3x3 stride 1, and no maxpool.
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=not batchnorm)
        self.bn1 = _norm(64, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage = []
            for j in range(n):
                stage.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, batchnorm, skip))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        # Adaptive pooling, not avg_pool2d(4): any input size the stride plan allows works.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# min_size 8: three stride-2 stages still leave the last one >= 1 pixel.
@register_model("resnet18", title="ResNet-18", default_init="kaiming", min_size=8,
                switches=("batchnorm", "skip", "init"),
                summary="CIFAR ResNet-18: 3x3 stem, BasicBlocks 2-2-2-2 (64-512), projection shortcuts")
def resnet18(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, skip: bool = True) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels, batchnorm, BasicBlock, skip)


@register_model("resnet34", title="ResNet-34", default_init="kaiming", min_size=8,
                switches=("batchnorm", "skip", "init"),
                summary="CIFAR ResNet-34: 3x3 stem, BasicBlocks 3-4-6-3 (64-512), projection shortcuts")
def resnet34(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, skip: bool = True) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, batchnorm, BasicBlock, skip)


@register_model("resnet50", title="ResNet-50", default_init="kaiming", min_size=8,
                switches=("batchnorm", "skip", "init"),
                summary="CIFAR ResNet-50: 3x3 stem, Bottlenecks 3-4-6-3 (64-512, x4 expansion)")
def resnet50(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, skip: bool = True) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, batchnorm, Bottleneck, skip)
