"""--optimizer muon: the Newton-Schulz orthogonalisation, the two update rules, and real training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import StopAtStep, without_timing

from cifarlab.recipes import build_config
from cifarlab.models import build_model
from cifarlab.errors import Interrupted
from cifarlab.run import load_run
from cifarlab.training import engine
from cifarlab.training.engine import fit
from cifarlab.training.muon import Muon, orthogonalize
from cifarlab.training.optim import build_optimizer


def test_newton_schulz_is_close_to_the_orthogonal_factor_of_the_svd():
    torch.manual_seed(0)
    # a filter-shaped matrix with singular values spread over 2 orders of magnitude
    u, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(576, 64))
    spread = torch.logspace(0, -2, 64)
    g = u @ torch.diag(spread) @ v.T
    x = orthogonalize(g)
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.5 and singular.max() < 1.3           # every direction about the same size
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 99
    exact = u @ v.T
    assert nn.functional.cosine_similarity(x.flatten(), exact.flatten(), dim=0) > 0.95
    # a tall matrix is handled through its transpose: the same answer
    torch.testing.assert_close(orthogonalize(g.T), x.T, atol=1e-5, rtol=1e-4)


def test_groups_without_muon_step_exactly_as_torch_sgd():
    torch.manual_seed(0)
    a, b = nn.Linear(20, 5), nn.Linear(20, 5)
    b.load_state_dict(a.state_dict())
    ours = Muon(a.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    reference = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(3):
        x = torch.randn(8, 20)
        for model, optimizer in ((a, ours), (b, reference)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_a_muon_step_moves_a_filter_by_lr_along_an_orthogonal_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, bias=False)
    before = conv.weight.detach().clone()
    optimizer = Muon([{"params": [conv.weight], "muon": True}], lr=0.05, momentum=0.0, nesterov=False)
    conv(torch.randn(4, 16, 8, 8)).square().mean().backward()
    optimizer.step()
    step = (before - conv.weight.detach()).reshape(32, -1) / 0.05        # 32 x 144: wide, so no extra scale
    singular = torch.linalg.svdvals(step)
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_muon_takes_the_conv_filters_and_sgd_the_rest():
    cfg = build_config({"model": "deeper-cnn", "dataset": "cifar10", "optimizer": "muon", "lr": 0.05,
                        "muon_lr": 0.2, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True})
    model = build_model("deeper-cnn", 10)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, Muon)
    muon = [p for g in optimizer.param_groups if g["muon"] for p in g["params"]]
    sgd = [p for g in optimizer.param_groups if not g["muon"] for p in g["params"]]
    assert {id(p) for p in muon} == {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert len(muon) + len(sgd) == len(list(model.parameters()))
    assert {g["lr"] for g in optimizer.param_groups if g["muon"]} == {0.2}
    assert {g["momentum"] for g in optimizer.param_groups if g["muon"]} == {cfg.muon_momentum}
    assert {g["lr"] for g in optimizer.param_groups if not g["muon"]} == {0.05}


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_a_bad_muon_lr_is_refused(value):
    from cifarlab.errors import UsageError
    with pytest.raises(UsageError, match="^--muon-lr must be a finite number > 0"):
        build_config({"model": "basic-cnn", "dataset": "cifar10", "optimizer": "muon", "muon_lr": value})


@pytest.mark.slow                  # three short trainings of basic-cnn on 2,000 images
def test_muon_learns_real_images_and_resumes_exactly(cifar_mini, tmp_path, monkeypatch):
    settings = {"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(cifar_mini), "epochs": 2,
                "limit_train": 2000, "batch_size": 100, "optimizer": "muon", "lr": 0.05, "muon_lr": 0.05,
                "momentum": 0.9, "nesterov": True, "schedule": "onecycle", "label_smoothing": 0.1,
                "precision": "fp32", "quiet": True, "download": False}
    summary = fit(build_config({**settings, "out": str(tmp_path / "whole")}))
    assert summary["final_test_acc"] > 25.0                                 # chance is 10%
    checkpoint = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    assert any(g["muon"] for g in checkpoint["optimizer"]["param_groups"])

    monkeypatch.setattr(engine, "StopSignals", StopAtStep(27))               # Ctrl-C at epoch 2, step 7
    with pytest.raises(Interrupted):
        fit(build_config({**settings, "out": str(tmp_path / "cut")}))
    monkeypatch.undo()
    fit(build_config({**settings, "out": str(tmp_path / "cut")}), resume=True)
    assert without_timing(load_run(tmp_path / "cut").metrics) == without_timing(load_run(tmp_path / "whole").metrics)
    whole, cut = load_run(tmp_path / "whole").model(), load_run(tmp_path / "cut").model()
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), cut.state_dict().values()))


def _steps_on_a_matrix(optimizer_for, nesterov=True, steps=4):
    """A 24 x 10 matrix (tall: torch's lr scale sqrt(rows / columns) applies) after `steps` steps with fixed
    gradients, from the optimizer optimizer_for(param) builds."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(24, 10))
    grads = [torch.randn(24, 10) for _ in range(steps)]
    optimizer = optimizer_for(weight)
    for grad in grads:
        weight.grad = grad.clone()
        optimizer.step()
    return weight.detach()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_our_muon_agrees_with_torch_muon_on_a_matrix():
    settings = {"lr": 0.05, "momentum": 0.6, "nesterov": True, "weight_decay": 0.01, "ns_steps": 3}
    ours = _steps_on_a_matrix(lambda p: Muon([{"params": [p], "muon": True}], **settings))
    theirs = _steps_on_a_matrix(lambda p: torch.optim.Muon([p], **settings))
    start = _steps_on_a_matrix(lambda p: Muon([p], lr=0.0), steps=1)
    moved = (theirs - start).abs().max()
    # torch orthogonalises in bf16 everywhere, ours in float32 on a CPU: agreement to bf16's precision
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0.02 * moved.item())
    plain = _steps_on_a_matrix(lambda p: Muon([{"params": [p], "muon": True}], **{**settings, "nesterov": False}))
    assert (plain - theirs).abs().max() > 0.1 * moved             # the tolerance tells the two rules apart


def test_renorm_keeps_each_filter_tensor_at_norm_sqrt_out_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(7.0)
    optimizer = Muon([{"params": [conv.weight], "muon": True, "renorm": True}], lr=0.1, momentum=0.6)
    before = conv.weight.detach().clone()
    conv(torch.randn(2, 8, 6, 6)).square().mean().backward()
    optimizer.step()
    step = before * (16 ** 0.5 / before.norm()) - conv.weight.detach()      # renormalised, then stepped
    singular = torch.linalg.svdvals(step.reshape(16, -1) / 0.1)
    assert singular.min() > 0.4 and singular.max() < 1.3
    assert abs(conv.weight.norm().item() - 4.0) < 1.0         # near sqrt(16), far from the 7x-scaled start


def test_muon_settings_reach_the_optimizer():
    cfg = build_config({"model": "fast94", "dataset": "cifar10", "optimizer": "muon", "lr": 1.0,
                        "muon_ns_steps": 3, "muon_renorm": True, "weight_decay": 0.01})
    groups = build_optimizer(build_model("fast94", 10), cfg).param_groups
    assert {(g["ns_steps"], g["renorm"], g["weight_decay"]) for g in groups if g["muon"]} == {(3, True, 0.0)}


def test_a_bad_ns_step_count_is_refused():
    from cifarlab.errors import UsageError
    with pytest.raises(UsageError, match="^--muon-ns-steps must be an integer >= 1, got 0$"):
        build_config({"model": "fast94", "dataset": "cifar10", "optimizer": "muon", "muon_ns_steps": 0})
