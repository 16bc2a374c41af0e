"""cifarlab export: a trained model as ONNX, TorchScript or safetensors, for use outside cifarlab.

Every format takes what the model takes in training: float32 NCHW images,
pixels / 255 normalised with the dataset's mean and std. Each file carries
that recipe (mean, std, image size) and the class names in its metadata, so a
consumer needs nothing else from the run folder.

ONNX uses torch's torch.export-based ("dynamo") exporter when onnxscript is
installed -- the default and maintained path in torch >= 2.9 -- and the legacy
TorchScript-based exporter otherwise (deprecated, still works in torch 2.14).
Both write opset 18, input "images", output "logits", a dynamic batch
dimension, and the weights inside the one .onnx file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cifarlab.errors import CifarlabError, UsageError
from cifarlab.runfolder import EXPORT_FORMATS

OPSET = 18
INSTALL_HINT = "pip install 'cifarlab[export]'"


@dataclass
class Exported:
    path: Path
    format: str
    exporter: str                   # how the file was written
    max_abs_diff: float | None      # exported vs eager logits on a random batch; None where nothing ran

    def __str__(self) -> str:
        check = ("" if self.max_abs_diff is None else
                 f"; max |exported - PyTorch| logit difference on a random batch: {self.max_abs_diff:.2e}")
        return f"{self.format}: {self.path} ({self.exporter}{check})"


def export_metadata(cfg, info, classes: list[str]) -> dict:
    """What a consumer needs to feed the model and read its output."""
    import cifarlab
    return {"model": cfg.model, "dataset": cfg.dataset, "classes": classes, "num_classes": info.num_classes,
            "in_channels": info.channels, "image_size": info.size, "mean": list(info.mean), "std": list(info.std),
            "batchnorm": cfg.batchnorm, "dropout": cfg.dropout, "skip": cfg.skip,
            "input": "float32 NCHW, (pixels / 255 - mean) / std",
            "cifarlab_version": cifarlab.__version__}


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> str:
    try:
        import onnx
    except ImportError:
        raise CifarlabError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    # The dynamo exporter translates through onnxscript; without it, the legacy exporter still works.
    dynamo = importlib.util.find_spec("onnxscript") is not None
    if dynamo:
        # external_data=False: one self-contained file (fine below ONNX's 2 GB limit; WRN-28-10 is 146 MB).
        options = {"dynamic_shapes": ({0: torch.export.Dim("batch")},), "external_data": False, "verbose": False}
    else:
        options = {"dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))   # the legacy path's notice
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                          opset_version=OPSET, dynamo=dynamo, **options)
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))
    return f"torch.onnx {'dynamo' if dynamo else 'legacy TorchScript'} exporter, opset {OPSET}"


def onnx_max_abs_diff(path: Path, model: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Largest |onnxruntime - eager| logit difference on `x`; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"images": x.numpy()})
    with torch.inference_mode():
        return (torch.from_numpy(out) - model(x)).abs().max().item()


@contextlib.contextmanager
def _torchscript_deprecation_silenced():
    # torch 2.14 marks torch.jit.* as deprecated (FutureWarning on every call); the format still loads in
    # torch and libtorch (C++), which is why people ask for it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> str:
    with _torchscript_deprecation_silenced():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"cifarlab.json": json.dumps(metadata)})
    return "torch.jit.trace"


def torchscript_max_abs_diff(path: Path, model: torch.nn.Module, x: torch.Tensor) -> float:
    with _torchscript_deprecation_silenced():
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return (loaded(x) - model(x)).abs().max().item()


def export_safetensors(model: torch.nn.Module, path: Path, metadata: dict) -> str:
    from safetensors.torch import save_file
    # safetensors metadata is str -> str: one JSON entry holds ours.
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(path), metadata={"cifarlab": json.dumps(metadata)})
    return "safetensors.torch.save_file"


class TemperatureScaled(torch.nn.Module):
    """The model with its logits divided by the temperature `evaluate --calibration` fitted: what export
    --calibrated writes for ONNX and TorchScript, so their softmax gives calibrated probabilities."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x):
        return self.model(x) / self.temperature


def export_run(source, fmt: str, out: str | Path | None = None, model=None, calibrated: bool = False) -> Exported:
    """Export the run's model (the weights of Run.weights_to_load()) to `out`, default RUN_DIR/EXPORT_FORMATS[fmt].

    calibrated: ONNX and TorchScript output the logits divided by the stored temperature (baked in); safetensors
    holds weights only, so its metadata carries the temperature to divide by. Either way the metadata says so."""
    from cifarlab.runfolder import open_source

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format '{fmt}' (choose from {', '.join(EXPORT_FORMATS)})")
    run, weights = open_source(source, model)
    cfg, info = run.train_config(), run.dataset_info()
    model = run.model(weights)
    metadata = export_metadata(cfg, info, run.classes)
    if calibrated:
        temperature = run.temperature("export --calibrated", weights)
        metadata["temperature"] = temperature
        metadata["calibrated"] = ("the output logits are already divided by temperature" if fmt != "safetensors"
                                  else "divide the logits by temperature before the softmax")
        if fmt != "safetensors":
            model = TemperatureScaled(model, temperature).eval()
    path = Path(out) if out else run.path / EXPORT_FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    # Batch 2 to trace: torch.export specialises a size-1 dimension, which would pin the batch to 1.
    example = torch.randn(2, info.channels, info.size, info.size, generator=g)
    check = torch.randn(3, info.channels, info.size, info.size, generator=g)   # another batch size on purpose
    if fmt == "onnx":
        how = export_onnx(model, example, path, metadata)
        return Exported(path, fmt, how, onnx_max_abs_diff(path, model, check))
    if fmt == "torchscript":
        how = export_torchscript(model, example, path, metadata)
        return Exported(path, fmt, how, torchscript_max_abs_diff(path, model, check))
    return Exported(path, fmt, export_safetensors(model, path, metadata), None)
