"""Lookahead weight averaging: every few steps the weights are pulled back to a slow average.

The slow copy follows the fast (trained) weights, `slow += (1 - decay) * (fast - slow)`, and
then the fast weights restart from it. `decay` grows with training progress (cubically, up to
0.95^5 per sync): early on the net trains freely, late in training the noisy last steps of SGD are
averaged away, which is worth a few tenths of a percent at the end of a short run. At the end
of training the model takes the slow weights (`finish`).
"""

from __future__ import annotations

import torch
from torch import nn

EVERY = 5               # optimizer steps between syncs
MAX_DECAY = 0.95 ** 5   # the slow copy's decay per sync at the end of training


class Lookahead:
    def __init__(self, model: nn.Module, total_steps: int):
        self.total_steps = max(1, total_steps)
        # parameters and the BN running statistics: every floating-point tensor of the state
        # (not num_batches_tracked, an integer count)
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.names = list(state)
        self.fast = list(state.values())
        self.slow = [v.detach().clone() for v in self.fast]

    def decay(self, step: int) -> float:
        return MAX_DECAY * (min(step, self.total_steps) / self.total_steps) ** 3

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step `step` (1-based)."""
        if step % EVERY == 0:
            self._sync(self.decay(step))

    @torch.no_grad()
    def _sync(self, decay: float) -> None:
        torch._foreach_lerp_(self.slow, self.fast, 1 - decay)
        torch._foreach_copy_(self.fast, self.slow)

    @torch.no_grad()
    def finish(self) -> None:
        """The model takes the slow weights (end of training)."""
        torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": {name: v.detach().clone() for name, v in zip(self.names, self.slow)}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        saved = state["slow"]
        if list(saved) != self.names or any(saved[n].shape != s.shape for n, s in zip(self.names, self.slow)):
            raise ValueError("the checkpoint's lookahead weights do not fit this model")
        torch._foreach_copy_(self.slow, [saved[n].to(s.device) for n, s in zip(self.names, self.slow)])
