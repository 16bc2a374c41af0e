"""What a run computes in: --precision auto on GPUs with and without native bf16 (mocked: no GPU here), TF32 only
for the mixed precisions, and the --compile fallback over a whole first step (forward, backward, optimizer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cifarlab
from cifarlab.recipes import build_config
from cifarlab.training import device as device_module
from cifarlab.training import engine, trainer
from cifarlab.training.device import Precision, resolve_precision
from conftest import without_timing, write_cifar10

CUDA = torch.device("cuda")


def gpu(monkeypatch, capability: tuple[int, int], has_argument: bool = True) -> None:
    """torch.cuda answering as a GPU of `capability` would: is_bf16_supported() counts emulation (True on every
    GPU since Kepler), unless asked for native support only (torch >= 2.3)."""
    native = capability >= (8, 0)
    if has_argument:
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return native or including_emulation
    else:
        def is_bf16_supported() -> bool:
            return True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)


@pytest.mark.parametrize("has_argument", [True, False], ids=["torch-asks-native", "older-torch-reads-capability"])
@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")], ids=["V100", "T4", "A100", "H100"])
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, expected,
                                                                        has_argument):
    gpu(monkeypatch, capability, has_argument)
    assert resolve_precision("auto", CUDA) == expected
    precision = Precision.for_training("auto", CUDA)
    assert precision.name == expected and precision.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]


@pytest.fixture
def tf32_flags(monkeypatch):
    """TF32 switched on for the whole process, as it was after any earlier run; put back after the test."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)


def tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def tiny_config(tmp_path, name: str, **settings):
    return build_config({"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(tmp_path / "data"), "epochs": 1,
                         "batch_size": 50, "val_size": 0, "download": False, "quiet": True,
                         "out": str(tmp_path / name), **settings})


def test_fp32_means_fp32_and_tf32_is_on_only_for_mixed_precision(tmp_path, tf32_flags, monkeypatch):
    write_cifar10(tmp_path / "data", per_batch=10, test=10)
    engine.fit(tiny_config(tmp_path, "fp32", precision="fp32"))
    assert tf32() == (False, False)              # TF32 left on by an earlier run is switched off
    engine.fit(tiny_config(tmp_path, "bf16", precision="bf16"))
    assert tf32() == (True, True)
    # the switch is set at every run's setup, for the precision that run resolved to
    seen = []
    monkeypatch.setattr(engine, "use_tf32", lambda name: seen.append(name) or device_module.use_tf32(name))
    engine.fit(tiny_config(tmp_path, "again", precision="fp32"))
    assert seen == ["fp32"] and tf32() == (False, False)


class BackwardFails(torch.autograd.Function):
    """Stands in for a compiled graph whose backward cannot be built here (no C compiler, an unsupported op)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backend='inductor' raised: CppCompileError: no C compiler in the backward")


class CompiledStandIn(nn.Module):
    """What torch.compile returns: the model under `_orig_mod`; here its forward runs and its backward fails."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model

    def forward(self, x):
        return BackwardFails.apply(self._orig_mod(x))


class NormDropNet(nn.Module):
    """BatchNorm statistics and dropout masks: what a failed first step could leave changed."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.body(x)


def test_a_compile_failure_in_the_backward_falls_back_to_eager_with_the_same_numbers(tmp_path, monkeypatch, capfd):
    write_cifar10(tmp_path / "data", per_batch=20, test=20)
    settings = dict(data_dir=tmp_path / "data", epochs=2, batch_size=25, val_size=0, download=False,
                    precision="fp32")
    eager = cifarlab.train(NormDropNet, "cifar10", out=tmp_path / "eager", quiet=True, **settings)
    compiled_models = []
    monkeypatch.setattr(trainer.torch, "compile",
                        lambda model, **kw: compiled_models.append(CompiledStandIn(model)) or compiled_models[-1])
    capfd.readouterr()
    fallen = cifarlab.train(NormDropNet, "cifar10", out=tmp_path / "compiled", compile=True, quiet=False, **settings)
    err = capfd.readouterr().err
    assert len(compiled_models) == 1
    assert ("cifarlab: --compile is not available here (RuntimeError: backend='inductor' raised: CppCompileError: "
            "no C compiler in the backward); training without it") in err
    assert without_timing(fallen.metrics) == without_timing(eager.metrics)
    weights = fallen.model().state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in eager.model().state_dict().items())
