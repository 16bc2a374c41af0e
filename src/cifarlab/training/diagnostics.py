"""--diagnostics N: how the gradient flows through the network, recorded every N optimizer steps.

A recorded step is the 1st optimizer step of the run and every Nth after it (global steps 1, N+1, 2N+1, ...;
the first shows the network as initialised). For every layer with a weight matrix or filter bank (a `weight`
parameter of 2 or more dimensions that trains: convolutions and linear layers; not BatchNorm/LayerNorm, whose
1-D scale is a per-channel gain rather than a transformation, nor frozen layers such as fast94's whitening
stem) it writes one row to RUN/diagnostics.jsonl:

- step (global, 1-based), epoch, layer (its module path, e.g. "features.3"), kind ("Conv2d"), depth (its index
  among the recorded layers on the main path, in module order: the forward order of a Sequential model),
  shortcut (true for a residual block's projection, `downsample` or `shortcut`, which is not on the main path:
  it takes the depth of the layer before it, so a plain net and its residual twin number their layers alike);
- grad_norm: the L2 norm of the weight's gradient after backward (as the optimizer sees it: averaged over
  ranks by DDP under torchrun, unscaled under fp16), torch.linalg.vector_norm(layer.weight.grad); null where it
  is not finite (an fp16 overflow, whose step the scaler skips: that step's update_ratio is null too);
- weight_norm: the L2 norm of the weight before the optimizer step;
- update_ratio: ||weight after the step - weight before|| / weight_norm (the optimizer's whole step:
  momentum, weight decay, Adam's scaling);
- act_mean, act_std: of the layer's output (before any normalisation or activation), for the step's batch
  (this rank's share under torchrun);
- relu_zero: the fraction of zeros in the output of the first nn.ReLU module that runs after the layer in
  the forward pass (a reused ReLU module counts at each call); null where none follows (the classifier's
  last layer) or the model calls F.relu instead of a module.

With TensorBoard on, each value is also a scalar (diagnostics/<column>/<layer>) and each gradient a histogram
(gradients/<layer>, counted by torch.histc). Biases are left out. The forward hooks exist on recorded steps only, so other steps cost nothing; a compiled
model (--compile) would recompile for them, so its act_* and relu_zero are null (the gradient and weight
columns are recorded as usual). Only rank 0 records. Nothing here changes what is computed: it reads the
gradients, weights and outputs, draws no random number and writes nothing into the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from cifarlab.storage import atomic_write_text

FIELDS = ("grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std", "relu_zero")


SHORTCUTS = ("downsample", "shortcut")     # the module names of residual shortcuts (ours and torchvision's)


def on_shortcut(name: str) -> bool:
    """Whether module path `name` lies on a residual shortcut ("layer2.0.downsample.0")."""
    return any(part in SHORTCUTS for part in name.split("."))


def recorded_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every layer whose weight matrix or filter bank trains, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2 and m.weight.requires_grad]


class Diagnostics:
    """Records one recorded step's rows. The training step calls start, before_update, after_update, finish.

    model: the bare model (no DDP or compile wrapper), whose module paths name the layers.
    path: diagnostics.jsonl (None: rows are returned only); writer: TensorBoard's SummaryWriter or None."""

    def __init__(self, model: nn.Module, every: int, path: Path | None = None, writer=None):
        self.every, self.path, self.writer = every, path, writer
        self.layers = recorded_layers(model)
        self.relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        self.step = None          # the global step being recorded, None between recorded steps
        self._hooks: list = []

    def due(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    def start(self, step: int, epoch: int, hooks: bool = True) -> None:
        """Before global step `step`'s forward: on a recorded step, hook the layers (hooks=False: a compiled
        model, whose activations are not recorded)."""
        if not self.due(step):
            return
        self.step, self.epoch = step, epoch
        self._acts: dict[str, torch.Tensor] = {}
        self._relu: dict[str, torch.Tensor] = {}
        self._waiting: list[str] = []           # layers run since the last ReLU
        self._hists = self._before = self._after = None
        if hooks:
            self._hooks = [m.register_forward_hook(self._layer_hook(name)) for name, m in self.layers]
            self._hooks += [m.register_forward_hook(self._relu_hook) for m in self.relus]

    def _layer_hook(self, name: str):
        def hook(module, inputs, output):
            if name not in self._acts and isinstance(output, torch.Tensor):   # a layer called twice: its first call
                # computed now: an in-place ReLU may overwrite this output before the step ends. Two passes in
                # the output's own precision with float32 sums: std_mean over a float copy cost 3.7x as much
                # (6.5 against 1.7 ms on a bf16 batch of 64 x 32 x 32 x 32, BENCHMARKS.md)
                out = output.detach()
                mean = out.mean(dtype=torch.float32)
                std = (torch.linalg.vector_norm(out - mean.to(out.dtype), dtype=torch.float32)
                       / math.sqrt(out.numel() - 1)) if out.numel() > 1 else mean.new_zeros(())
                self._acts[name] = torch.stack([mean, std])
                self._waiting.append(name)
        return hook

    def _relu_hook(self, module, inputs, output):
        if self._waiting:
            zero = 1 - torch.count_nonzero(output.detach()) / output.numel()   # a third of (x == 0).mean()'s time
            for name in self._waiting:
                self._relu.setdefault(name, zero)
            self._waiting = []

    def before_update(self, optimizer=None, scaler=None) -> None:
        """After backward, before the optimizer step: gradient norms and a copy of each weight."""
        if self.step is None:
            return
        self._remove_hooks()
        if scaler is not None and optimizer is not None:
            scaler.unscale_(optimizer)    # what scaler.step does first anyway: the same numbers, read unscaled
        with torch.no_grad():
            grads = [m.weight.grad for _, m in self.layers]
            self._has_grad = [g is not None for g in grads]
            self._grad_norms = [torch.full((), float("nan"), device=m.weight.device) if g is None
                                else torch.linalg.vector_norm(g.detach()) for g, (_, m) in zip(grads, self.layers)]
            # read now: some optimizers (Muon) change the gradients in place
            self._hists = [None if g is None else histogram(g) for g in grads] if self.writer else None
            self._before = [m.weight.detach().clone() for _, m in self.layers]

    def after_update(self) -> None:
        if self.step is None or self._before is None:
            return
        with torch.no_grad():
            self._after = [torch.linalg.vector_norm(m.weight.detach() - before)
                           for (_, m), before in zip(self.layers, self._before)]

    def finish(self, stepped: bool = True) -> list[dict]:
        """After the step: its rows (written to diagnostics.jsonl and TensorBoard); [] on an unrecorded step or
        one that --on-nan skip-step dropped (no gradient)."""
        if self.step is None:
            return []
        self._remove_hooks()
        rows = self._rows() if stepped and self._after is not None else []
        if rows and self.path is not None:
            with open(self.path, "a") as f:      # one write per recorded step; resume trims what follows last.pt
                f.write("".join(json.dumps(r) + "\n" for r in rows))
        if rows and self.writer is not None:
            self._log_tensorboard(rows)
        self.step = self._before = self._after = self._hists = None
        return rows

    def _rows(self) -> list[dict]:
        with torch.no_grad():
            norms = [torch.linalg.vector_norm(w) for w in self._before]
            numbers = torch.stack([torch.stack([g.float(), n.float(), u.float()])
                                   for g, n, u in zip(self._grad_norms, norms, self._after)]).tolist()   # one sync
            acts = {k: v.tolist() for k, v in self._acts.items()}
            relu = {k: v.item() for k, v in self._relu.items()}
        rows, depth = [], -1
        # a gradient that is there but not finite: an fp16 overflow, whose step the scaler skips
        overflow = any(has and not math.isfinite(g) for has, (g, _, _) in zip(self._has_grad, numbers))
        for (name, module), (grad, weight, update) in zip(self.layers, numbers):
            shortcut = on_shortcut(name)
            depth += 0 if shortcut else 1
            act = acts.get(name, (None, None))
            rows.append({"step": self.step, "epoch": self.epoch, "layer": name, "kind": type(module).__name__,
                         "depth": max(depth, 0), "shortcut": shortcut,
                         "grad_norm": grad if math.isfinite(grad) else None, "weight_norm": weight,
                         "update_ratio": update / weight if weight > 0 and not overflow else None,
                         "act_mean": act[0], "act_std": act[1], "relu_zero": relu.get(name)})
        return rows

    def _log_tensorboard(self, rows: list[dict]) -> None:
        for row, hist in zip(rows, self._hists or [None] * len(rows)):
            for key in FIELDS:
                if row[key] is not None:
                    self.writer.add_scalar(f"diagnostics/{key}/{row['layer']}", row[key], row["step"])
            if hist is not None:
                self.writer.add_histogram_raw(f"gradients/{row['layer']}", global_step=row["step"], **hist)

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def histogram(values: torch.Tensor, bins: int = 64) -> dict:
    """add_histogram_raw's arguments for `values`, counted by torch.histc on their device: add_histogram's numpy
    binning of a 2M-value gradient costs more than the training step it describes."""
    flat = values.detach().float().flatten()
    lo, hi = flat.min().item(), flat.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None       # an fp16 overflow's gradient: torch.histc refuses a range that is not finite
    hi = hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-6     # one value: one narrow bucket
    counts = torch.histc(flat, bins=bins, min=lo, max=hi)
    return {"min": lo, "max": hi, "num": flat.numel(), "sum": flat.sum().item(),
            "sum_squares": flat.square().sum().item(), "bucket_limits": torch.linspace(lo, hi, bins + 1)[1:].tolist(),
            "bucket_counts": counts.tolist()}


def trim(path: Path, last_step: int) -> None:
    """On resume: keep the rows of steps up to `last_step` (the checkpoint's), so the steps trained again after
    it are not written twice (and a line cut short by a kill is dropped)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))
