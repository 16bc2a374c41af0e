"""Fast paths give the plain path's results: bf16 autocast vs fp32, torch.compile vs eager,
and --compile falls back cleanly where it cannot compile."""

import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models import build_model
from cifarlab.recipes import build_config
from cifarlab.training.engine import fit


def loss_and_grads(model, x, y, autocast_dtype=None):
    model.zero_grad()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["basic-cnn", "deeper-cnn"])      # resnet18: same ops, 30 s of emulated bf16
def test_bf16_autocast_loss_matches_fp32_on_a_real_batch(name, real_batch):
    x, y = real_batch(32)
    torch.manual_seed(0)
    model = build_model(name, 10).eval()          # eval: no dropout, BN with fixed statistics
    fp32, g32 = loss_and_grads(model, x, y)
    bf16, g16 = loss_and_grads(model, x, y, torch.bfloat16)
    assert bf16 == pytest.approx(fp32, rel=0.02)
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16]), dim=0)
    assert cos > 0.98                                 # the update points the same way


def inductor_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) would call, or None where there is none:
    inductor tries the names in torch._inductor.config.cpp.cxx ($CXX, else g++; clang++ on macOS)."""
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return next((path for name in names if name and (path := shutil.which(name))), None)


@pytest.mark.slow                          # inductor builds C++ for forward and backward: ~25 s on 2 cores, cold cache
def test_compiled_model_matches_eager_on_a_real_batch(real_batch):
    # Only a machine without what torch.compile needs skips; any other failure of compile is a failure.
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip(f"torch.compile does not support this Python ({sys.version.split()[0]})")
    if inductor_compiler() is None:
        pytest.skip("torch.compile needs a C++ compiler (g++, or $CXX) and there is none here")
    x, y = real_batch(32)
    torch.manual_seed(0)
    model = build_model("basic-cnn", 10).eval()
    eager, g_eager = loss_and_grads(model, x, y)
    compiled, g_compiled = loss_and_grads(torch.compile(model), x, y)
    assert compiled == pytest.approx(eager, rel=1e-5)
    for a, b in zip(g_eager, g_compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_compile_falls_back_to_eager_when_compilation_fails(cifar_sample, tmp_path, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    common = {"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_sample), "epochs": 1,
              "limit_train": 128}
    compiled = fit(build_config({**common, "compile": True, "out": str(tmp_path / "c")}))
    assert "--compile is not available here (RuntimeError: InductorError: no working C++ compiler found); " \
           "training without it" in capsys.readouterr().err
    plain = fit(build_config({**common, "quiet": True, "out": str(tmp_path / "p")}))
    assert compiled["final_test_acc"] == plain["final_test_acc"]          # the same run, eager
