import pytest
import torch

from cifarlab.models import build_model
from cifarlab.settings import TrainConfig
from cifarlab.training.optim import build_optimizer, lr_factor


def test_step_schedule_decays_every_five_epochs_as_in_the_article():
    cfg = TrainConfig(epochs=15, schedule="step", step_size=5, gamma=0.1)
    factors = [lr_factor(cfg, epoch * 100, 100) for epoch in range(15)]
    assert factors[:5] == [1.0] * 5
    assert factors[5:10] == [pytest.approx(0.1)] * 5 and factors[10:] == [pytest.approx(0.01)] * 5


def test_onecycle_rises_to_the_peak_then_falls_to_near_zero():
    cfg = TrainConfig(epochs=10, schedule="onecycle", warmup_epochs=2)
    f = [lr_factor(cfg, s, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.04) and max(f) == pytest.approx(f[20], abs=1e-9) and f[20] > 0.99
    assert all(a <= b for a, b in zip(f[:20], f[1:21])) and all(a >= b for a, b in zip(f[20:], f[21:]))
    assert f[-1] < 0.02


def test_onecycle_start_and_end_factors_are_settings():
    """airbench94's published schedule rises from 0.2x and ends at 0.07x; ours from 0.04x to 0.001x by default."""
    cfg = TrainConfig(epochs=10, schedule="onecycle", warmup_epochs=2, onecycle_start=0.2, onecycle_end=0.07)
    f = [lr_factor(cfg, s, 10) for s in range(101)]
    assert f[0] == pytest.approx(0.2) and f[10] == pytest.approx(0.6) and f[20] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.07 + 0.93 * 0.5) and f[100] == pytest.approx(0.07)


def test_cosine_with_warmup_starts_small_and_ends_at_zero():
    cfg = TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1)
    f = [lr_factor(cfg, s, 50) for s in range(200)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)
    assert f[-1] < 1e-3


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_weight_decay_skips_batchnorm_and_biases(name, cls):
    model = build_model("deeper-cnn", 10)
    opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=5e-4, nesterov=True))
    assert isinstance(opt, cls)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 7_320_394
    if name == "sgd":
        assert decayed["nesterov"] and decayed["momentum"] == 0.9


def test_decay_norms_puts_weight_decay_on_batchnorm_and_biases_too():
    from cifarlab.models import build_model
    from cifarlab.recipes import build_config
    from cifarlab.training.optim import build_optimizer

    model = build_model("fast94", 10)
    def decayed(**extra):
        cfg = build_config({"model": "fast94", "dataset": "cifar10", "optimizer": "sgd", "lr": 0.1,
                            "weight_decay": 5e-4, **extra})
        groups = build_optimizer(model, cfg).param_groups
        return sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shifts = sum(p.numel() for p in model.parameters() if p.requires_grad and p.ndim == 1)
    assert shifts > 0 and decayed() == trainable - shifts and decayed(decay_norms=True) == trainable
