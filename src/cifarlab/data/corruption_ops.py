"""The 15 common corruptions of Hendrycks & Dietterich (2019), batched in torch.

Each function takes float images (N, 3, H, W) in [0, 1], its severity's parameters and a torch.Generator,
and returns float images in [0, 1]. The parameters per severity are the constants of their CIFAR generation
script (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), kept in data/corruptions.py; the methods
follow theirs, written again here for whole batches. Where theirs calls something cifarlab does not ship:
- motion blur (ImageMagick's MotionBlurImage): the same one-sided Gaussian line kernel (width 2*radius+1,
  taps at whole-pixel offsets along the angle, edge pixels repeated), applied by gathering shifted copies;
- frost (six photographs of frost): a procedural texture, a plasma-fractal haze with motion-blurred ice
  needles, bluish white; its statistics are not fitted to the photographs;
- elastic: the random affine and the smooth displacement are applied in one bilinear sample, not two.
Pixelate calls PIL in theirs; here PIL's BOX arithmetic (fixed point, one axis at a time, 8 bits after each pass)
is done in torch for whole batches, with the same bytes.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F


# np.uint8(v) truncates; float32 arithmetic lands a whole level k at k - 1e-5 now and then, which theirs (float64)
# would not turn into k - 1: so truncate after this much slack, far below a level
TRUNCATION_SLACK = 1e-3


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, truncated as their script's np.uint8(... * 255)."""
    return (x * 255 + TRUNCATION_SLACK).floor().clamp(0, 255).to(torch.uint8)


def _uniform(shape, low, high, gen) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def _pad_index(n: int, pad: int, mode: str) -> torch.Tensor:
    """Indices of a row padded by `pad` each side: edge (aaa|abc), reflect101 (cb|abc), symmetric (ba|abc)."""
    i = torch.arange(-pad, n + pad)
    if mode == "edge":
        return i.clamp(0, n - 1)
    period = 2 * n - 2 if mode == "reflect101" else 2 * n
    i = i.remainder(period)
    return torch.where(i < n, i, period - i - (0 if mode == "reflect101" else 1))


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    return x[..., _pad_index(x.shape[-2], ph, mode), :][..., _pad_index(x.shape[-1], pw, mode)]


def _filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with one 2-D kernel, the border padded by `mode`."""
    c = x.shape[1]
    kh, kw = kernel.shape
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(_pad(x, kh // 2, kw // 2, mode), weight, groups=c)


def _gaussian_1d(sigma: float, truncate: float) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)   # scipy's rule, which skimage's gaussian uses
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "edge", truncate: float = 4.0) -> torch.Tensor:
    k = _gaussian_1d(sigma, truncate)
    return _filter(_filter(x, k[None, :], mode), k[:, None], mode)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by `factor` and crop back to the size (scipy's zoom, order 1: corners aligned)."""
    h = x.shape[-1]
    ch = int(math.ceil(h / factor))
    top = (h - ch) // 2
    size = int(round(ch * factor))
    z = F.interpolate(x[..., top:top + ch, top:top + ch], size=(size, size), mode="bilinear", align_corners=True)
    trim = (size - h) // 2
    return z[..., trim:trim + h, trim:trim + h]


def plasma_fractal(n: int, size: int, decay: float, gen) -> torch.Tensor:
    """n diamond-square height maps (n, size, size) in [0, 1], as theirs (size a power of two)."""
    m = torch.zeros(n, size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled(a):
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, gen).double()

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(squares)
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    low = m.amin((1, 2), keepdim=True)
    m = m - low
    return (m / m.amax((1, 2), keepdim=True)).float()


def motion_blur_batch(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's motion blur: taps i = 0..2r at the whole pixel nearest i*(cos a, sin a), weights
    exp(-i^2 / 2 sigma^2) normalised; one angle (degrees) per image; edge pixels repeated."""
    n, _, h, w = x.shape
    width = 2 * int(math.ceil(radius)) + 1
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).float()
    rad = angles.double() * math.pi / 180
    dx = torch.ceil(taps[None, :] * torch.cos(rad)[:, None] - 0.5).long()   # (n, width)
    dy = torch.ceil(taps[None, :] * torch.sin(rad)[:, None] - 0.5).long()
    rows, cols = torch.arange(h), torch.arange(w)
    batch = torch.arange(n)[:, None, None]
    out = torch.zeros_like(x)
    for i in range(width):
        r = (rows[None, :] + dy[:, i:i + 1]).clamp(0, h - 1)   # (n, h)
        c = (cols[None, :] + dx[:, i:i + 1]).clamp(0, w - 1)
        out += weights[i] * x.permute(0, 2, 3, 1)[batch, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)
    return out


# ---------------------------------------------------------------- noise

def gaussian_noise(x, c, gen):
    return (x + torch.randn(x.shape, generator=gen) * c).clamp(0, 1)


def shot_noise(x, c, gen):
    return (torch.poisson(x * c, generator=gen) / c).clamp(0, 1)


def impulse_noise(x, c, gen):
    # skimage's salt & pepper: each value flipped with probability c, to 1 or 0 with equal odds
    flipped = torch.rand(x.shape, generator=gen) <= c
    salt = torch.rand(x.shape, generator=gen) <= 0.5
    return torch.where(flipped, salt.to(x.dtype), x)


# ---------------------------------------------------------------- blur

def defocus_blur(x, c, gen):
    radius, alias_blur = c
    span = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((span[:, None] ** 2 + span[None, :] ** 2) <= radius ** 2).double()
    disk = disk / disk.sum()
    g = torch.exp(-0.5 * (torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / alias_blur) ** 2)
    g = g / g.sum()   # cv2.GaussianBlur's 3x3 kernel, which anti-aliases the disk
    kernel = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=1)[0, 0]
    keep = kernel.abs().sum(0) > 0   # the disk is zero far from the centre: a smaller kernel, same sums
    side = int(keep.nonzero().max() - 8)
    return _filter(x, kernel[8 - side:9 + side, 8 - side:9 + side], "reflect101").clamp(0, 1)


def glass_blur(x, c, gen):
    sigma, delta, iterations = c
    n, ch, h, w = x.shape
    x = to_levels(gaussian_blur(x, sigma))   # np.uint8 between the blurs, as theirs: truncated
    rows, cols = torch.arange(delta + 1, h), torch.arange(delta + 1, w)   # theirs: range(H - d, d, -1)
    batch = torch.arange(n)[:, None, None]
    for _ in range(iterations):
        # Theirs walks the pixels bottom-right to top-left and means to swap each with a neighbour drawn from
        # randint(-d, d), but `a[i], a[j] = a[j], a[i]` on numpy rows copies a[j] into a[i] and leaves a[j]: a
        # pixel takes the value of a neighbour up and/or left of it, which the walk has not reached yet. So
        # (for d = 1, every CIFAR severity) it is one parallel gather from the unchanged image, as here.
        dx = torch.randint(-delta, delta, (n, len(rows), len(cols)), generator=gen)
        dy = torch.randint(-delta, delta, (n, len(rows), len(cols)), generator=gen)
        source = x.clone()
        x[:, :, delta + 1:, delta + 1:] = source.permute(0, 2, 3, 1)[
            batch, rows[None, :, None] + dy, cols[None, None, :] + dx].permute(0, 3, 1, 2)
    return gaussian_blur(x.float() / 255, sigma).clamp(0, 1)


def motion_blur(x, c, gen):
    radius, sigma = c
    angles = _uniform((x.shape[0],), -45, 45, gen)
    # theirs reads the image back from ImageMagick's 8-bit PNG, which rounds to the nearest level
    return (motion_blur_batch(x, radius, sigma, angles).clamp(0, 1) * 255).round() / 255


def zoom_blur(x, c, gen):
    out = x.clone()
    for factor in c:
        out += clipped_zoom(x, float(factor))
    return (out / (len(c) + 1)).clamp(0, 1)


# ---------------------------------------------------------------- weather

def _gray(x):
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def snow(x, c, gen):
    loc, scale, zoom, threshold, radius, sigma, keep = c
    n, _, h, w = x.shape
    flakes = torch.randn((n, 1, h, w), generator=gen) * scale + loc
    flakes = clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = (flakes.clamp(0, 1) * 255).floor() / 255   # theirs passes the layer through an 8-bit PNG
    flakes = motion_blur_batch(flakes, radius, sigma, _uniform((n,), -135, -45, gen))
    flakes = (flakes * 255).round() / 255
    x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (x + flakes + flakes.flip(-1, -2)).clamp(0, 1)


def frost_texture(n: int, h: int, w: int, gen) -> torch.Tensor:
    """Procedural frost in [0, 1] (n, 3, h, w): a plasma haze with bright ice needles in three directions."""
    size = 1 << (max(h, w) - 1).bit_length()
    haze = plasma_fractal(n, size, 1.6, gen)[:, None, :h, :w]
    seeds = (torch.rand((n, 1, h, w), generator=gen) < 0.06).float()
    needles = sum(motion_blur_batch(seeds, 4, 2.0, _uniform((n,), -180, 180, gen)) for _ in range(3))
    ice = (0.35 + 0.45 * haze + 1.5 * needles).clamp(0, 1)
    tint = torch.tensor([0.84, 0.91, 1.0]).view(1, 3, 1, 1)   # frost photographs are bluish white
    return ice * tint


def frost(x, c, gen):
    image_weight, frost_weight = c
    return (image_weight * x + frost_weight * frost_texture(x.shape[0], x.shape[2], x.shape[3], gen)).clamp(0, 1)


def fog(x, c, gen):
    strength, decay = c
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    top = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * plasma_fractal(n, size, decay, gen)[:, None, :h, :w]
    return (x * top / (top + strength)).clamp(0, 1)


# ---------------------------------------------------------------- digital

def brightness(x, c, gen):
    # HSV's value is the largest channel; with hue and saturation kept, every channel scales with it
    value = x.amax(1, keepdim=True)
    raised = (value + c).clamp(0, 1)
    return torch.where(value > 0, x * raised / value.clamp(min=1e-12), raised.expand_as(x)).clamp(0, 1)


def contrast(x, c, gen):
    means = x.mean((2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def elastic_transform(x, c, gen):
    strength, smoothness, affine_shift = c
    n, _, h, w = x.shape
    centre, side = torch.tensor([w // 2, h // 2], dtype=torch.float64), min(h, w) // 3
    src = torch.stack([centre + side, centre + torch.tensor([side, -side]), centre - side])   # (3, 2) as (x, y)
    dst = src + _uniform((n, 3, 2), -affine_shift, affine_shift, gen).double()
    # the affine map taking src to dst, inverted: each output pixel samples the input at inverse(dst -> src)
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    inverse = torch.linalg.solve(torch.cat([dst, ones], 2), src.expand(n, 3, 2))   # (n, 3, 2)
    dx = torch.zeros(n, 1, h, w)
    dy = torch.zeros(n, 1, h, w)
    if strength > 0:
        dx = gaussian_blur(_uniform((n, 1, h, w), -1, 1, gen), smoothness, "symmetric", 3.0) * strength
        dy = gaussian_blur(_uniform((n, 1, h, w), -1, 1, gen), smoothness, "symmetric", 3.0) * strength
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    px, py = xs + dx[:, 0].double(), ys + dy[:, 0].double()
    points = torch.stack([px, py, torch.ones_like(px)], -1).reshape(n, h * w, 3)
    where = (points @ inverse).reshape(n, h, w, 2)
    grid = torch.stack([where[..., 0] * 2 / (w - 1) - 1, where[..., 1] * 2 / (h - 1) - 1], -1).float()
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.clamp(0, 1)


# Pillow's resampling arithmetic: coefficients in fixed point with 22 fractional bits, sums rounded half up
PIL_PRECISION_BITS = 22


def _pil_box_weights(size_in: int, size_out: int) -> torch.Tensor:
    """Pillow's BOX resampling along one axis as a (size_out, size_in) matrix of its fixed-point integer
    coefficients (precompute_coeffs and normalize_coeffs_8bpc in its Resample.c), as float64: exact."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        centre = (i + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        inside = [j for j in range(low, high) if -0.5 < (j - centre + 0.5) / filterscale <= 0.5]
        for j in inside:
            m[i, j] = int(0.5 + (1 << PIL_PRECISION_BITS) / len(inside))
    return m


def _pil_resize_axis(levels: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """One of Pillow's 8-bit passes: integer levels times the fixed-point weights, plus half, shifted back to
    8 bits and clipped (every sum is an integer below 2^53, so float64 holds it exactly)."""
    moved = levels.movedim(axis, -1) @ weights.T
    out = torch.floor((moved + (1 << (PIL_PRECISION_BITS - 1))) / (1 << PIL_PRECISION_BITS)).clamp(0, 255)
    return out.movedim(-1, axis)


def pil_box_resize(levels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image.resize((width, height), Image.BOX) on 8-bit levels (..., H, W) as float64: horizontal pass, then
    vertical, each rounded to 8 bits, as Pillow does."""
    out = _pil_resize_axis(levels, _pil_box_weights(levels.shape[-1], width), -1)
    return _pil_resize_axis(out, _pil_box_weights(levels.shape[-2], height), -2)


def pixelate(x, c, gen):
    h, w = x.shape[-2:]
    levels = (x.double() * 255).round()   # the uint8 image PIL is given
    small = pil_box_resize(levels, int(h * c), int(w * c))
    return (pil_box_resize(small, h, w) / 255).float()


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def jpeg_compression(x, c, gen):
    # PIL's encoder, as theirs; its C code releases the GIL, so threads use every core
    images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    workers = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(workers) as pool:   # one chunk per worker: a block is small
        out = list(pool.map(lambda im: _jpeg_round_trip(im, c), images, chunksize=-(-len(images) // workers)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255
