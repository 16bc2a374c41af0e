"""`cifarlab models`: every registered model (and those installed packages add) with its parameter count for a
dataset's shape, and the table the command prints."""

from __future__ import annotations

import torch

from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, count_params
from cifarlab.models.registry import load_entry_points


def model_rows(num_classes: int, channels: int, size: int, dataset: str) -> tuple[list[dict], list[str]]:
    """A row per model (name, params for this shape or None where its images are too small, plain_params: the
    count with --no-skip where the model has that switch, description, switches, origin), and a warning per
    plug-in that cannot be built for this dataset."""
    load_entry_points()   # models that installed packages add (the cifarlab.models entry-point group)
    rows, warnings = [], []
    for name, spec in MODELS.items():
        params = plain = None
        if size >= spec.min_size:
            # On the meta device nothing is allocated or initialised: counting 36M parameters is instant.
            try:
                with torch.device("meta"):
                    params = count_params(build_model(name, num_classes, channels, size, dataset=dataset))
                    if "skip" in spec.switches:
                        plain = count_params(build_model(name, num_classes, channels, size, dataset=dataset,
                                                         skip=False))
            except UsageError as e:
                warnings.append(str(e))
        rows.append({"name": name, "params": params, "plain_params": plain, "dataset": dataset,
                     "description": spec.summary,
                     "switches": sorted(spec.switches), "origin": spec.origin})
    return rows, warnings


def format_models(rows: list[dict], dataset: str) -> str:
    """The table `cifarlab models` prints: name, parameters (n/a: images too small), the plain net's count
    (--no-skip; - where the model has no shortcuts to remove), description."""
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{width}} {'params (' + dataset + ')':>20} {'--no-skip':>12}  description"]
    for r in rows:
        count = f"{r['params']:,}" if r["params"] is not None else "n/a"
        plain = f"{r['plain_params']:,}" if r.get("plain_params") is not None else "-"
        lines.append(f"{r['name']:<{width}} {count:>20} {plain:>12}  {r['description']}")
    return "\n".join(lines) + "\n"
