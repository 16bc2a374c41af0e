"""The article's basic CNN: 2 x (conv3x3 -> ReLU -> maxpool), FC 128, dropout 0.25, FC classes.

32 then 64 channels; on 32x32 RGB the classifier sees 64 x 8 x 8 = 4096 features
(3136 on 28x28 MNIST).

The modules run as conv -> maxpool -> ReLU: ReLU is monotonic, so it commutes
with max-pooling (same outputs, same gradients) and runs on a quarter of the
elements, which makes training faster on a CPU (measured: BENCHMARKS.md,
"Figures behind choices in the code").
"""

from torch import nn

from cifarlab.models.registry import register_model


class BasicCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 dropout: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU(inplace=True),
            nn.Dropout(0.25 if dropout else 0.0),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("basic-cnn", title="Basic CNN", min_size=4, switches=("dropout", "init"),
                summary="2 conv blocks (32, 64), FC 128, dropout 0.25")
def basic_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, dropout: bool = True) -> BasicCNN:
    return BasicCNN(num_classes, in_channels, image_size, dropout=dropout)
