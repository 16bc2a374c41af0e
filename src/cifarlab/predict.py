"""cifarlab predict: top-k labels for image files, from a run folder or a checkpoint.

Each image goes through what the model saw in training, by the same function
(imagedecode.prepare_image): turned upright as its EXIF orientation says, 16-bit
scaled to 8, RGB (or grayscale for MNIST-style models), resized to the dataset's
side; then pixels / 255, normalised with the dataset's mean and std. The resize stretches to a square instead of
cropping: CIFAR objects fill the frame, and a crop could cut them off.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.data.augment import normalize
from cifarlab.errors import UsageError
from cifarlab.runfolder import RunFolder, open_source


def _to_image(image, channels: int, size: int) -> torch.Tensor:
    """A PIL image -> uint8 (channels, size, size), by the function that decodes training folders."""
    from cifarlab.data.imagedecode import prepare_image

    image = prepare_image(image, "L" if channels == 1 else "RGB", size)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1).contiguous()


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """One image file as uint8 (channels, size, size); a one-line UsageError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()   # decodes: a truncated file fails here
            return _to_image(opened, channels, size)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path}: not an image (Pillow cannot identify its format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"{path}: cannot read image ({e})") from None


def as_images(images, channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """File paths, PIL images or uint8 arrays (HWC, or a NHWC / NCHW batch) -> (uint8 N,C,H,W, labels)."""
    import numpy as np
    from PIL import Image

    if isinstance(images, (np.ndarray, torch.Tensor)):
        array = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
        if array.dtype != torch.uint8:
            raise UsageError(f"images must be uint8 pixels (0..255), got {array.dtype}")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise UsageError(f"images must be HWC, NHWC or NCHW arrays, got shape {tuple(array.shape)}")
        if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
            array = array.permute(0, 3, 1, 2)
        pil = [Image.fromarray(a.permute(1, 2, 0).squeeze(-1).numpy() if a.shape[0] == 1 else
                               a.permute(1, 2, 0).numpy()) for a in array]
        return torch.stack([_to_image(p, channels, size) for p in pil]), \
            [f"image {i}" for i in range(len(pil))]
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    out, labels = [], []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            out.append(_to_image(item, channels, size))
            labels.append(f"image {i}")
        else:
            out.append(read_image(item, channels, size))
            labels.append(str(item))
    if not out:
        raise UsageError("no images to predict")
    return torch.stack(out), labels


def predict(source: str | Path | RunFolder, images, top_k: int = 5, batch_size: int = 256, model=None,
            calibrated: bool = False) -> list[dict]:
    """[{"image": NAME, "top": [{"label", "index", "probability"}, ...]}] in the order of `images`.

    calibrated: probabilities of the logits divided by the temperature `evaluate --calibration` stored (refused
    in one line when there is none); the labels and their order stay the same."""
    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    run, weights = open_source(source, model)
    temperature = run.temperature("predict --calibrated", weights) if calibrated else 1.0
    info = run.dataset_info()
    # Every image is read before anything is predicted: a bad path fails the command, not half its output.
    batch, labels = as_images(images, info.channels, info.size)
    names = run.classes
    net = run.model(weights)
    mean, std = torch.tensor(info.mean), torch.tensor(info.std)
    probs = []
    with torch.inference_mode():
        for chunk in batch.split(batch_size):
            probs.append((net(normalize(chunk.float().div(255), mean, std)).float() / temperature).softmax(1))
    values, indices = torch.cat(probs).topk(min(top_k, info.num_classes), dim=1)
    return [{"image": label,
             "top": [{"label": names[i], "index": i, "probability": p} for p, i in zip(vs.tolist(), ix.tolist())]}
            for label, vs, ix in zip(labels, values, indices)]


def format_predictions(results: list[dict]) -> str:
    """One line per image: `IMAGE: label 0.873, label 0.052, ...`."""
    return "".join(f"{r['image']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]) + "\n"
                   for r in results)
