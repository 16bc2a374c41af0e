"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2014, configuration D; BN as in Ioffe & Szegedy).

Thirteen conv3x3 -> BN -> ReLU layers in five stages, each ending in a 2x2 max-pool:

    64 64 M | 128 128 M | 256 256 256 M | 512 512 512 M | 512 512 512 M

Five halvings take 32x32 to 1x1, so the features are 512 numbers. The
classifier is the one common CIFAR implementations use (kuangliu/pytorch-cifar,
and the CIFAR VGGs derived from it): a single Linear(512, classes), no hidden
FC layers and no dropout -- the ImageNet head's 4096-4096 FC layers (over 100M
parameters at 7x7) would be mostly dead weight on a 1x1 map. The convs keep
their biases even with BN, as torchvision's vgg16_bn and those CIFAR versions
do, so the parameter count is the published one. An adaptive average pool
before the classifier is a no-op at 32x32 and lets larger inputs through.
"""

from torch import nn

from cifarlab.models.registry import register_model

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _features(plan, in_channels: int, batchnorm: bool) -> nn.Sequential:
    layers, cin = [], in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(cin, item, 3, padding=1), *([nn.BatchNorm2d(item)] if batchnorm else []),
                   nn.ReLU(inplace=True)]
        cin = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, plan=VGG16, num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True):
        super().__init__()
        self.features = _features(plan, in_channels, batchnorm)
        widths = [c for c in plan if c != "M"]
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


# min_size 32: five max-pools.
@register_model("vgg16-bn", title="VGG-16-BN", default_init="kaiming", min_size=32,
                switches=("batchnorm", "init"),
                summary="CIFAR VGG-16 with BatchNorm: 13 conv3x3 (64-512), 5 max-pools, FC 512 -> classes")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True) -> VGG:
    return VGG(VGG16, num_classes, in_channels, batchnorm)
