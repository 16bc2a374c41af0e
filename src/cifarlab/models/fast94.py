"""fast94: a small, wide network built for time to 94% on CIFAR-10.

The ideas are the public ones of the CIFAR speed-run literature (Page's DAWNBench
ResNet, tysam-code's hlb-cifar10, Keller Jordan's airbench); the code is ours:

- a frozen 2x2 *whitening* stem: its filters are the eigenvectors of the training
  images' 2x2-patch covariance, scaled to unit variance, so the first layer starts
  out decorrelating pixels instead of learning to (`init_from_data`);
- three stages of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU, few and wide
  (64, 256, 256), so most of the work is large, efficient convolutions;
- BatchNorm scales frozen at 1 (only the shifts learn: with BN after every conv the
  scale is redundant with the next conv's weights), and a fast BN running average;
- identity (Dirac) initialisation of the first input channels of each conv, so the
  untrained network passes its input through and trains from the first step;
- global max-pool and a bias-free linear head whose logits are scaled down (x 1/9),
  which keeps the softmax from saturating at the large learning rates used.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarlab.models.registry import register_model

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4      # added to the eigenvalues: the faintest patch directions are not blown up to unit variance
# PyTorch's momentum (weight of the new batch): the running statistics follow the weights closely in a
# 10-epoch run. airbench94's 0.6 is the old statistics' weight, so the same average.
BN_MOMENTUM = 0.4
BN_EPS = 1e-12
LOGIT_SCALE = 1 / 9


def _norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)
    norm.weight.requires_grad_(False)   # frozen scale: the next conv's weights carry it
    return norm


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():  # identity on the first channels: the untrained net passes its input on
        nn.init.dirac_(conv.weight[:cin])
    return conv


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(_conv(cin, cout), nn.MaxPool2d(2), _norm(cout), nn.GELU(),
                         _conv(cout, cout), _norm(cout), nn.GELU())


class Fast94(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        patch = in_channels * WHITEN_KERNEL ** 2
        # 2 x patch filters: each eigenvector and its negative, so GELU keeps both signs.
        self.whiten = nn.Conv2d(in_channels, 2 * patch, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        chans = (2 * patch, *widths)
        self.stages = nn.Sequential(*[Stage(a, b) for a, b in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = WHITEN_EPS, chunk: int = 500) -> None:
        """Set the stem to whiten 2x2 patches of `images` (N, C, H, W, normalised floats).

        Computed on the CPU in float64 (eigh is not available on every device), a chunk of
        images at a time, so 5,000 CIFAR images need ~30 MB instead of ~1 GB.
        """
        k, c = WHITEN_KERNEL, images.shape[1]
        total = torch.zeros(c * k * k, dtype=torch.float64)
        outer = torch.zeros(c * k * k, c * k * k, dtype=torch.float64)
        count = 0
        for part in images.detach().cpu().split(chunk):
            patches = part.float().unfold(2, k, 1).unfold(3, k, 1)          # n, C, H', W', k, k
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]).float()
        filters = filters.reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * LOGIT_SCALE


# No switches: BN, dropout-free design and its own (identity) init are the point of the model.
@register_model("fast94", title="fast94", min_size=8, switches=(), data_init=True,
                summary="speed-run net: frozen 2x2 whitening stem, 3 stages conv-pool-BN-GELU-conv-BN-GELU "
                        "(64, 256, 256), max-pool, scaled linear head")
def fast94(num_classes: int = 10, in_channels: int = 3) -> Fast94:
    return Fast94(num_classes, in_channels)
