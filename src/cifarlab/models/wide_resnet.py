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


from cifarlab.models.preact_resnet import PreActResNet
from cifarlab.models.registry import register_model

PAPER_DROPOUT = 0.3


def wide_resnet(depth: int, widen: int, num_classes: int = 10, in_channels: int = 3,
                batchnorm: bool = True, dropout: bool = True, skip: bool = True) -> PreActResNet:
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
    n = (depth - 4) // 6
    return PreActResNet([n] * 3, (16 * widen, 32 * widen, 64 * widen), 16, num_classes, in_channels, batchnorm,
                        PAPER_DROPOUT if dropout else 0.0, skip)


# min_size 4: two stride-2 groups.
@register_model("wrn-16-8", title="WRN-16-8", default_init="kaiming", min_size=4,
                switches=("batchnorm", "dropout", "skip", "init"),
                summary="Wide ResNet 16-8: pre-activation, 2 blocks per group, widths 16/128/256/512, dropout 0.3")
def wrn_16_8(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True,
             dropout: bool = True, skip: bool = True) -> PreActResNet:
    return wide_resnet(16, 8, num_classes, in_channels, batchnorm, dropout, skip)


@register_model("wrn-28-10", title="WRN-28-10", default_init="kaiming", min_size=4,
                switches=("batchnorm", "dropout", "skip", "init"),
                summary="Wide ResNet 28-10: pre-activation, 4 blocks per group, widths 16/160/320/640, dropout 0.3")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True,
              dropout: bool = True, skip: bool = True) -> PreActResNet:
    return wide_resnet(28, 10, num_classes, in_channels, batchnorm, dropout, skip)
