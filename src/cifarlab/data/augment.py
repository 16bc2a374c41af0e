"""Batched augmentations on the device: one call transforms a whole batch.

Every function takes images as float tensors (B, C, H, W) in [0, 1] (crop and
flip also accept uint8) and a `torch.Generator` on the images' device, so a
seeded run draws the same augmentations every time.
"""

from __future__ import annotations

import torch

# The op names a run may list are config.AUGMENTATIONS, with the other settings' choices (config imports no torch,
# and data/ imports nothing above it).


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator, mode: str = "constant") -> torch.Tensor:
    """Pad by `padding` (zeros, or mode="reflect") and cut a random H x W window per image."""
    b, c, h, w = x.shape
    if mode == "reflect":  # reflect padding exists for float tensors only
        padded = torch.nn.functional.pad(x.float(), (padding,) * 4, mode="reflect").to(x.dtype)
    else:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return flip_where(x, torch.rand(x.shape[0], generator=g, device=x.device) < 0.5)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose `mask` entry is True."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation, each a factor in [1 - s, 1 + s] per image."""
    b, dev = x.shape[0], x.device
    x = x * _uniform(b, 1 - strength, 1 + strength, g, dev)[:, None, None, None]
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _uniform(b, 1 - strength, 1 + strength, g, dev)[:, None, None, None] + mean
    gray = _gray(x)
    x = (x - gray) * _uniform(b, 1 - strength, 1 + strength, g, dev)[:, None, None, None] + gray
    return x.clamp_(0, 1)


def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image, centred anywhere (clipped at the border)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=g, device=x.device)[:, None, None]
    cx = torch.randint(0, w, (b,), generator=g, device=x.device)[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    if size % 2 == 0:  # an even square: drop the last row/column of the odd one
        inside &= (ys - cy < size // 2) & (xs - cx < size // 2)
    return x * (~inside)[:, None].to(x.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean[None, :, None, None]) / std[None, :, None, None]
