"""Optimizers and learning-rate schedules, all stepped once per batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from cifarlab.errors import UsageError
from cifarlab.settings import TrainConfig
from cifarlab.training.muon import Muon


def _head_names(model: nn.Module) -> set[str]:
    """Parameter names of the classifier: the last Linear layer (fc, classifier.4, head, ...)."""
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return {f"{last[0]}.{p}" for p, _ in model.get_submodule(last[0]).named_parameters()} if last else set()


def _norm_names(model: nn.Module) -> set[str]:
    """Parameter names of the normalisation layers (BatchNorm / LayerNorm scales and shifts)."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return {f"{name}.{p}" if name else p for name, m in model.named_modules() if isinstance(m, norms)
            for p, _ in m.named_parameters(recurse=False)}


def _param_groups(model: nn.Module, weight_decay: float, lr: float, backbone_lr_factor: float = 1.0,
                  norm_lr_factor: float = 1.0, decay_all: bool = False, whiten_bias: bool = False) -> list[dict]:
    # With weight decay, BN parameters and biases are left undecayed (unless decay_all): shrinking a BN
    # scale or a bias towards zero regularises little and may slow training.
    # Fine-tuning (backbone_lr_factor < 1): the pretrained layers move slower than the new head.
    # norm_lr_factor: the normalisation layers' own lr (fast94 moves its BN shifts 64x faster).
    # whiten_bias: fast94's stem bias gets a group of its own (marked "whiten": its own schedule, build_scheduler),
    # at the BN shifts' lr, as airbench94_muon trains both at one bias lr.
    head = _head_names(model) if backbone_lr_factor != 1.0 else set()
    norm = _norm_names(model) if norm_lr_factor != 1.0 or whiten_bias else set()
    whiten = _whiten_name(model) if whiten_bias else set()
    groups: dict[tuple[bool, bool, bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name in head, name in norm or name in whiten, name in whiten, decay_all or p.ndim > 1)
            groups.setdefault(key, []).append(p)
    out = []
    for (is_head, is_norm, is_whiten, decays), params in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], not kv[0][3])):
        group_lr = lr if is_head or not head else lr * backbone_lr_factor
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0,
                 "lr": group_lr * (norm_lr_factor if is_norm else 1.0)}
        out.append({**group, "whiten": True} if is_whiten else group)
    return out


def _whiten_name(model: nn.Module) -> set[str]:
    """{"whiten.bias"}: the bias of the model's `whiten` stem; refused where the model has none."""
    whiten = getattr(model, "whiten", None)
    if not isinstance(whiten, nn.Conv2d) or whiten.bias is None or not whiten.bias.requires_grad:
        raise UsageError("--whiten-bias-epochs needs a model with a learnable whitening-stem bias "
                         "(a conv named `whiten`, as fast94's)")
    return {"whiten.bias"}


def _fused(model: nn.Module) -> dict:
    # One fused kernel per step instead of ~8 elementwise passes per tensor: unfused, the optimizer
    # is a real share of a small model's step on a CPU (measured: BENCHMARKS.md, "Figures behind
    # choices in the code"). Fused kernels exist for CPU and CUDA.
    device = next(model.parameters()).device.type
    return {"fused": True} if device in ("cpu", "cuda") else {}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay, cfg.lr, cfg.backbone_lr_factor, cfg.norm_lr_factor,
                           cfg.decay_norms, cfg.whiten_bias_epochs > 0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **_fused(model))
    if cfg.optimizer == "muon":
        return Muon(_muon_groups(groups, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    ns_steps=cfg.muon_ns_steps)
    if cfg.optimizer == "adam":
        # Adam's per-group weight_decay is the L2 penalty the article means by "weight decay in the optimiser".
        return torch.optim.Adam(groups, lr=cfg.lr, **_fused(model))
    return torch.optim.AdamW(groups, lr=cfg.lr, **_fused(model))


def _muon_groups(groups: list[dict], cfg: TrainConfig) -> list[dict]:
    """The conv filters (4-d weights) of each group move to a Muon group at --muon-lr (times the group's own
    factor) and --muon-momentum; everything else stays with Nesterov SGD at --lr."""
    out = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4]
        rest = [p for p in group["params"] if p.ndim != 4]
        if rest:
            out.append({**group, "params": rest})
        if filters:
            # renormalised filters keep their size, so a decay would only shrink the next step's relative size
            out.append({**group, "params": filters, "muon": True, "momentum": cfg.muon_momentum, "nesterov": True,
                        "lr": cfg.muon_lr * (group["lr"] / cfg.lr), "renorm": cfg.muon_renorm,
                        "weight_decay": 0.0 if cfg.muon_renorm else group["weight_decay"]})
    return out


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    epoch = step / steps_per_epoch
    if cfg.schedule == "step":
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    if cfg.schedule == "multistep":
        # cut by gamma at each milestone, a fraction of all the steps (He et al.: 32k and 48k of 64k iterations)
        # (ceil, at least step 1: a budget of a step or two keeps its first lr, and no two cuts share a step
        # where the budget has room for both)
        return cfg.gamma ** sum(step >= max(1, math.ceil(m * total)) for m in cfg.milestones)
    if cfg.schedule == "cosine":
        warm = cfg.warmup_epochs * steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if cfg.schedule == "linear":
        return 1 - step / total          # airbench94_muon's: 1 at the first step, 1/total at the last
    if cfg.schedule == "onecycle":
        # Linear rise from onecycle_start (0.04: lr/25) over the warm-up (default: 25% of training), then
        # linear decay to onecycle_end (0.001: ~0).
        rise = cfg.warmup_epochs if cfg.warmup_epochs > 0 else 0.25 * cfg.epochs
        start, end = cfg.onecycle_start, cfg.onecycle_end
        if epoch < rise:
            return start + (1 - start) * epoch / rise
        return end + (1 - end) * max(0.0, 1 - (epoch - rise) / max(1e-9, cfg.epochs - rise))
    return 1.0


def whiten_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The whitening bias's lr multiplier (--whiten-bias-epochs N): linear from 1 to 0 over the first N epochs'
    steps, then 0: frozen (airbench94_muon)."""
    steps = math.ceil(cfg.whiten_bias_epochs * steps_per_epoch)
    return max(0.0, 1 - step / steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    def run(s):
        return lr_factor(cfg, s, steps_per_epoch)

    def whiten(s):
        return whiten_factor(cfg, s, steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [whiten if g.get("whiten") else run
                                                         for g in optimizer.param_groups])
