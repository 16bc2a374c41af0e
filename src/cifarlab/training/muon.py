"""Muon: momentum whose update is orthogonalised, for convolution filters; Nesterov SGD for the rest.

Muon (Jordan et al., 2024) keeps an SGD momentum buffer per weight matrix, and steps along the nearest
semi-orthogonal matrix to it (U V^T of its SVD U S V^T) instead of along the buffer itself: every
direction of the update gets the same size, so the rare directions learn as fast as the common ones.
U V^T is approximated by five steps of a quintic Newton-Schulz iteration, X <- aX + b(XX^T)X + c(XX^T)^2X,
with the published coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) chosen to push every singular
value of a normalised X towards 1 quickly (to about 0.7-1.2, not exactly 1: that is enough).

A conv filter of shape (out, in, k, k) is the matrix out x (in k k). Parameters that are not conv
filters (BatchNorm, biases, the classifier) take plain (Nesterov) SGD: Muon is defined for matrices
of hidden layers only. `cifarlab train --optimizer muon` marks the groups (training/optim.py).

Why not torch.optim.Muon (torch >= 2.9): it takes 2-D parameters only, and has no weight renormalisation
(renorm=True: airbench94_muon rescales each filter tensor to norm sqrt(out channels) before every step, so
the step's size relative to the weights is the lr alone). On a 2-D matrix the two agree (tests/test_muon.py):
torch keeps an averaged momentum, buf <- m buf + (1 - m) g, where ours sums, buf <- m buf + g; the sums are
the averages times 1 / (1 - m), a factor that the Newton-Schulz normalisation removes.
"""

from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for matrix = U S V^T, by `steps` Newton-Schulz iterations (on a GPU in bf16,
    where it is cheap and accurate enough; elsewhere in float32)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:                       # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)      # singular values <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """One optimizer, two rules: param groups with muon=True step along the orthogonalised Nesterov momentum
    (scaled by sqrt(max(1, rows / columns)), so tall and wide matrices move alike; weight decay decoupled),
    the others are SGD with (Nesterov) momentum and L2 weight decay, as torch.optim.SGD.

    Every group has lr, momentum, nesterov, weight_decay, muon, ns_steps and renorm (a Muon group's filters are
    rescaled to norm sqrt(rows) before each step); a learning-rate scheduler scales them all alike."""

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, renorm: bool = False):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "muon": False, "ns_steps": ns_steps, "renorm": renorm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if group["muon"] or not decay else p.grad.add(p, alpha=decay)
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(momentum).add_(grad)
                direction = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if not group["muon"]:
                    p.add_(direction, alpha=-lr)
                    continue
                rows = p.size(0)
                if group.get("renorm"):   # absent from a checkpoint saved before renorm existed
                    p.mul_(rows ** 0.5 / p.norm())
                update = orthogonalize(direction.reshape(rows, -1), group["ns_steps"]).view_as(p)
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * max(1.0, rows / update[0].numel()) ** 0.5)
        return loss
