"""Checkpoints from before the ResNets took torchvision's layer names, refused in one line that names the rename.

ResNet-18/34/50, PreAct ResNet-18 and the WRNs once called their layers stem / layers.N / head, with a block's
projection named shortcut or projection. They now carry torchvision's names, so their state dicts load into
torchvision's models and back. The old keys are not mapped: layers.N is a flat block index whose stage depends
on the model's depth, and a map would keep a second set of names alive in every loader. Weights are refused
instead, before the generic "another model or version" message, which would list keys without saying why.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from cifarlab.errors import UsageError

OLD_PREFIXES = ("stem.", "layers.", "head.")
RENAME = ("a checkpoint from before cifarlab renamed ResNet layers to torchvision's (stem -> conv1/bn1, "
          "layers.N -> layer1-layer4, shortcut/projection -> downsample, head -> fc): retrain it")


def has_old_layer_names(own: Iterable[str], saved: Iterable[str]) -> bool:
    """True when `saved` uses the old names and the model's own keys (`own`) are torchvision's."""
    own, saved = set(own), set(saved)
    # A ViT or fast94 has a `head` of its own: only a model with torchvision's names and none of the old ones counts,
    # and only a state with both a stem and numbered layers (every old ResNet's had them) is old.
    model_renamed = ("conv1.weight" in own and any(k.startswith("layer1.") for k in own)
                     and not any(k.startswith(OLD_PREFIXES) for k in own))
    saved_before = (any(k.startswith("stem.") for k in saved) and any(k.startswith("layers.") for k in saved)
                    and not any(k.startswith("layer1.") for k in saved))
    return model_renamed and saved_before


def refuse_old_layer_names(model: nn.Module, state: dict, source) -> None:
    """UsageError naming the rename when `state` (without compile/DDP prefixes) predates it."""
    if has_old_layer_names(model.state_dict().keys(), state.keys()):
        raise UsageError(f"{source}: {RENAME}")
