"""The check every model passes once it is built: one batch of the data's shape in, [batch, num_classes] out.

A model whose head has another width trains without a word when it has more outputs than classes (timm's
1000-class head on CIFAR-10), and dies mid-epoch with "Target 93 is out of bounds" when it has fewer. Both
are refused here, before a run folder exists, in one line that says what to change.

The batch runs on the meta device, where no number is computed (a ViT costs nothing); a model that cannot
run there (an op without a meta kernel, a .item() in its forward) runs two images on its own device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from cifarlab.errors import UsageError

BATCH = 2      # two images: a forward that squeezes a batch of one down to a vector still shows its rows


def check_output(model: nn.Module, ref: str, num_classes: int, in_channels: int, image_size: int,
                 dataset: str | None = None, given: dict | None = None, takes: set[str] | None = None,
                 hint: str = "") -> None:
    """Refuse, in one line, a model whose output for one batch is not [batch, num_classes].

    given, takes: the keywords its factory was called with and those it names (None: an nn.Module instance).
    hint: said after the reason when the batch cannot run at all."""
    shape = (BATCH, in_channels, image_size, image_size)
    out = dry_forward(model, ref, shape, hint)
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"model '{ref}' returns a {type(out).__name__} for a batch of images, not a tensor of "
                         "logits [batch, classes]")
    if out.dim() != 2 or out.shape[0] != BATCH:
        raise UsageError(f"model '{ref}' turns a batch of {list(shape)} images into {list(out.shape)}, not "
                         f"[{BATCH}, {num_classes}] logits (one row per image)")
    if out.shape[1] != num_classes:
        raise UsageError(class_count_message(ref, int(out.shape[1]), num_classes, dataset, given or {}, takes))


def dry_forward(model: nn.Module, ref: str, shape: tuple[int, ...], hint: str = ""):
    """The model's output for zeros of `shape`, in eval mode, without touching its weights, its buffers (BatchNorm's
    running statistics), its training flags or the random state."""
    modes = [(m, m.training) for m in model.modules()]
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            try:
                return _on_meta(model, shape, dtype)
            except Exception:  # noqa: BLE001 - no meta kernel, data-dependent code: run it for real
                device = first.device if first is not None and first.device.type != "meta" else torch.device("cpu")
                return model(torch.zeros(shape, dtype=dtype, device=device))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's forward: say which and why, in one line
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"model '{ref}' cannot run a batch of {list(shape)} images ({type(e).__name__}: "
                         f"{reason}){hint}") from None
    finally:
        for module, training in modes:
            module.training = training


def _on_meta(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype):
    """The forward with every parameter and buffer replaced by a meta tensor of its shape: shapes only."""
    stand_ins = {name: torch.empty_like(t, device="meta")
                 for name, t in [*model.named_parameters(), *model.named_buffers()]}
    return functional_call(model, stand_ins, (torch.zeros(shape, dtype=dtype, device="meta"),), strict=False)


def class_count_message(ref: str, outputs: int, num_classes: int, dataset: str | None, given: dict,
                        takes: set[str] | None) -> str:
    """What differs and what to change: an nn.Module built with another head, a factory that was given
    num_classes and ignored it, one that takes another argument for it, or one that takes none.
    given: the keywords the factory was called with; takes: the ones it names (None: an instance)."""
    head = f"{ref} outputs {outputs} classes; {dataset or 'the dataset'} has {num_classes}: "
    if takes is None:
        return head + f"build the nn.Module you pass with {num_classes} outputs, or pass its class instead"
    if "num_classes" in given:
        return head + (f"its factory was given num_classes={num_classes} and did not use it; pass its own "
                       f"class-count argument with --model-arg NAME={num_classes}")
    others = sorted(takes - set(given))
    if others:
        return head + (f"pass its class-count argument with --model-arg NAME={num_classes} (it takes: "
                       f"{', '.join(others)}), or accept num_classes in its factory")
    return head + "accept num_classes in its factory (cifarlab passes it the dataset's class count)"
