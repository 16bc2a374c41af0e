"""cifarlab predict: top-k labels for image files, from a run folder or a checkpoint.

Each image goes through what the model saw in training: RGB (or grayscale for
MNIST-style models), resized to the dataset's side, pixels / 255, normalised
with the dataset's mean and std. The resize stretches to a square instead of
cropping: CIFAR objects fill the frame, and a crop could cut them off.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cifarlab.data.augment import normalize
from cifarlab.data.sources import DatasetInfo, dataset_info
from cifarlab.errors import UsageError
from cifarlab.evaluate import load_trained


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """One image file as uint8 (channels, size, size); a one-line UsageError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")   # decodes: a truncated file fails here
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path}: not an image (Pillow cannot identify its format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"{path}: cannot read image ({e})") from None
    if image.size != (size, size):
        # Pillow widens the filter when shrinking, so large photos are averaged down, not aliased.
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, channels).permute(2, 0, 1).contiguous()


def class_names(run_dir: Path, info: DatasetInfo) -> list[str]:
    """The run's own class list (config.json), else the dataset's known names, else indices."""
    config = run_dir / "config.json"
    if config.is_file():
        names = json.loads(config.read_text()).get("classes")
        if isinstance(names, list) and len(names) == info.num_classes:
            return [str(n) for n in names]
    if len(info.default_classes) == info.num_classes:
        return list(info.default_classes)
    return [str(i) for i in range(info.num_classes)]


def predict_images(source: str | Path, paths: list[str], top_k: int = 5, batch_size: int = 256) -> list[dict]:
    """[{"image": PATH, "top": [{"label", "index", "probability"}, ...]}] in the order of `paths`."""
    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    trained = load_trained(source)
    info = dataset_info(trained.cfg.dataset)
    # Every file is read before anything is predicted: a bad path fails the command, not half its output.
    images = torch.stack([read_image(p, info.channels, info.size) for p in paths])
    names = class_names(trained.run_dir, info)
    model = trained.model.eval()
    mean, std = torch.tensor(info.mean), torch.tensor(info.std)
    probs = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            probs.append(model(normalize(chunk.float().div(255), mean, std)).float().softmax(1))
    values, indices = torch.cat(probs).topk(min(top_k, info.num_classes), dim=1)
    return [{"image": str(path),
             "top": [{"label": names[i], "index": i, "probability": p} for p, i in zip(vs.tolist(), ix.tolist())]}
            for path, vs, ix in zip(paths, values, indices)]


def format_predictions(results: list[dict]) -> str:
    """One line per image: `IMAGE: label 0.873, label 0.052, ...`."""
    return "".join(f"{r['image']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]) + "\n"
                   for r in results)
