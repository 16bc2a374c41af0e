"""Weight initialisation schemes the article discusses, applied to a built model."""

from __future__ import annotations

from torch import nn

INITS = ("kaiming", "xavier", "default")


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """kaiming: He-normal, std sqrt(2 / fan_in) for ReLU; xavier: Glorot-uniform; default: PyTorch's own."""
    if scheme not in INITS:
        raise ValueError(f"unknown init '{scheme}' (choose from {', '.join(INITS)})")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
