"""The article's deeper CNN: VGG-style, BatchNorm after every conv, Kaiming init.

Four blocks of 2 x (conv3x3 -> BN -> ReLU) + maxpool + Dropout2d(0.25), channels
64/128/256/512, then 2048 -> 1024 -> BN -> ReLU -> Dropout(0.5) -> 512 -> BN ->
ReLU -> Dropout(0.5) -> classes.
"""

from torch import nn

from cifarlab.models.registry import register_model


def _block(cin: int, cout: int, batchnorm: bool, dropout: bool) -> nn.Sequential:
    layers = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1), *([nn.BatchNorm2d(cout)] if batchnorm else []),
                   nn.ReLU(inplace=True)]
    layers += [nn.MaxPool2d(2), nn.Dropout2d(0.25 if dropout else 0.0)]
    return nn.Sequential(*layers)


def _hidden(cin: int, cout: int, batchnorm: bool, dropout: bool) -> list[nn.Module]:
    return [nn.Linear(cin, cout), *([nn.BatchNorm1d(cout)] if batchnorm else []),
            nn.ReLU(inplace=True), nn.Dropout(0.5 if dropout else 0.0)]


class DeeperCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 batchnorm: bool = True, dropout: bool = True):
        super().__init__()
        widths = [in_channels, 64, 128, 256, 512]
        self.features = nn.Sequential(*[_block(a, b, batchnorm, dropout) for a, b in zip(widths, widths[1:])])
        flat = 512 * (image_size // 16) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *_hidden(flat, 1024, batchnorm, dropout),
            *_hidden(1024, 512, batchnorm, dropout),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("deeper-cnn", title="Deeper CNN", default_init="kaiming", min_size=16,
                switches=("batchnorm", "dropout", "init"),
                summary="4 VGG blocks (64-512) with BatchNorm, Dropout2d 0.25, FC 1024-512, dropout 0.5")
def deeper_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batchnorm: bool = True,
               dropout: bool = True) -> DeeperCNN:
    return DeeperCNN(num_classes, in_channels, image_size, batchnorm=batchnorm, dropout=dropout)
