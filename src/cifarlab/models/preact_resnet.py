"""Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Same plan as our ResNet-18 (3x3 stride-1 stem, no max-pool, BasicBlocks
2-2-2-2 at 64/128/256/512 channels), but each block runs
BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 and adds its input untouched:
nothing sits on the identity path, so the signal (and gradient) passes
straight from any block to any other. Where the shape changes, the 1x1
projection shortcut takes the *pre-activated* input, as in the paper.

The stem is a bare conv (the first block pre-activates it), and after the
last block an extra BN -> ReLU precedes the pooling, as the paper prescribes
for the final unit (kuangliu/pytorch-cifar's PreActResNet18 leaves it out:
1,024 parameters fewer).

The layers carry our ResNet's names, which are torchvision's (conv1,
layer1-layerN, fc; in a block bn1/conv1/bn2/conv2/downsample); the final
BN is `bn`.
"""

from torch import nn

from cifarlab.models.registry import register_model


def norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> [dropout] -> conv3x3, + shortcut (also the Wide ResNet block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, batchnorm: bool = True, dropout: float = 0.0,
                 skip: bool = True):
        super().__init__()
        # Without BN the convs get a bias back, as a plain conv layer would have.
        bias = not batchnorm
        self.bn1 = norm(cin, batchnorm)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn2 = norm(cout, batchnorm)
        self.dropout = nn.Dropout(dropout)   # p = 0: a no-op (pre-activation ResNet, WRN switched off)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        # Not in place: without BN, bn1 is the identity and an in-place ReLU would overwrite the
        # block's input, which the identity shortcut still needs.
        self.relu = nn.ReLU()
        # skip off (the plain net): no shortcut, identity or projection
        self.skip = skip
        self.downsample = nn.Conv2d(cin, cout, 1, stride, bias=bias) if skip and (stride != 1 or cin != cout) \
            else None

    def forward(self, x):
        out = self.relu(self.bn1(x))
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut if self.skip else out


class PreActResNet(nn.Module):
    """Stem conv, stages of pre-activation blocks (the first block of every later stage strides 2),
    BN -> ReLU, global average pool, FC. Also the Wide ResNet's plan (wide_resnet.py)."""

    def __init__(self, blocks: list[int], widths=(64, 128, 256, 512), stem: int = 64, num_classes: int = 10,
                 in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0, skip: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=not batchnorm)
        cin = stem
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(PreActBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, batchnorm, dropout, skip))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(widths)   # 4 in the pre-activation ResNet, 3 in a WRN
        self.bn = norm(cin, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))


@register_model("preact-resnet18", title="PreAct ResNet-18", default_init="kaiming", min_size=8,
                switches=("batchnorm", "skip", "init"),
                summary="pre-activation ResNet-18: BN-ReLU-conv BasicBlocks 2-2-2-2 (64-512)")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True,
                    skip: bool = True) -> PreActResNet:
    return PreActResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, batchnorm=batchnorm,
                        skip=skip)
