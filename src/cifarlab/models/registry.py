"""The model registry: a name -> how to build it, and what the model supports.

Each cifarlab model declares its entry beside its code with `@register_model` (timm's idea,
without its factory layers). An entry states the switches the model has (`batchnorm`,
`dropout`, `skip`, `init`), where pretrained weights come from and whether it initialises itself
from data, so nothing else in cifarlab asks "is this model X?".

Besides the registered names, a model can be
- an import path `package.module:factory` (the entry-point convention of uvicorn and gunicorn),
- a name added by an installed package through the `cifarlab.models` entry-point group,
- a class, a factory or an `nn.Module` handed over from Python (`cifarlab.train(MyCNN, ...)`).
A class or factory is called with the keywords it accepts among BUILD_KEYWORDS, plus the
user's `model_args`; it has the `batchnorm` / `dropout` / `skip` switches when it accepts them. A factory
with a `**kwargs` catch-all (timm's `create_model`) also gets `num_classes` and `in_channels`.
Every model built is checked once (check.py): one batch must come out as [batch, num_classes].
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models.check import check_output
from cifarlab.models.init import INITS, initialize

SWITCHES = ("batchnorm", "dropout", "skip", "init")
BUILD_KEYWORDS = ("num_classes", "in_channels", "image_size", "batchnorm", "dropout", "skip")
# What a **kwargs catch-all is handed: the data's shape. The switches are not (a catch-all is no promise to
# honour them, and a switch that is silently ignored would be a wrong ablation).
CATCH_ALL_KEYWORDS = ("num_classes", "in_channels")
ENTRY_POINT_GROUP = "cifarlab.models"
# the flag that turns each switch off, for messages
SWITCH_FLAGS = {"batchnorm": "--no-batchnorm", "dropout": "--no-dropout", "skip": "--no-skip", "init": "--init"}


@dataclass(frozen=True)
class ModelSpec:
    name: str                       # a registered name, or the import path it was built from
    build: Callable[..., nn.Module]
    title: str = ""                 # as printed in the article's summary blocks
    summary: str = ""
    default_init: str = "default"   # what `--init auto` means for this model
    min_size: int = 1               # smallest input side the architecture accepts
    switches: frozenset = field(default_factory=frozenset)
    pretrained: Callable | None = None      # (model, download) -> model: fills weights from elsewhere
    pretrained_source: str = ""
    data_init: bool = False         # model.init_from_data(normalised train images) before training
    origin: str = "cifarlab"        # cifarlab | entry point NAME = VALUE | import path | Python object
    instance: bool = False          # an nn.Module handed over as it is: built by returning it


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, title: str, summary: str, default_init: str = "default", min_size: int = 1,
                   switches: tuple[str, ...] = ("init",), pretrained: Callable | None = None,
                   pretrained_source: str = "", data_init: bool = False):
    """Decorator: register `builder` (called with the keywords it accepts) under `name`."""
    unknown = set(switches) - set(SWITCHES)
    if unknown:
        raise ValueError(f"register_model({name!r}): unknown switches {sorted(unknown)}")

    def decorate(builder):
        # a declared switch the builder cannot take would be dropped on the way: an ablation of nothing
        missing = set(switches) - {"init"} - accepted_keywords(builder)
        if missing:
            raise ValueError(f"register_model({name!r}): declares {sorted(missing)} but its builder takes no such "
                             "keyword")
        MODELS[name] = ModelSpec(name, builder, title, summary, default_init, min_size, frozenset(switches),
                                 pretrained, pretrained_source, data_init,
                                 origin="cifarlab" if builder.__module__.startswith("cifarlab.") else builder.__module__)
        return builder
    return decorate


def _parameters(builder: Callable) -> list[inspect.Parameter]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []


def accepted_keywords(builder: Callable) -> set[str]:
    """The named parameters a class or factory takes (a **kwargs catch-all is not among them)."""
    return {p.name for p in _parameters(builder) if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


def takes_any_keyword(builder: Callable) -> bool:
    """True for a factory with a **kwargs catch-all, e.g. timm.create_model(model_name, **kwargs)."""
    return any(p.kind == p.VAR_KEYWORD for p in _parameters(builder))


def passed_keywords(builder: Callable) -> set[str]:
    """The BUILD_KEYWORDS cifarlab itself hands this factory: those it names, and with **kwargs the data's shape."""
    named = accepted_keywords(builder) & set(BUILD_KEYWORDS)
    return named | (set(CATCH_ALL_KEYWORDS) if takes_any_keyword(builder) else set())


def reference(obj) -> str:
    """The import path that names a Python class, factory or module instance: `module:qualname`."""
    target = obj if callable(obj) and not isinstance(obj, nn.Module) else type(obj)
    return f"{target.__module__}:{target.__qualname__}"


def spec_for_object(ref: str, obj, origin: str) -> ModelSpec:
    """An entry for a user's class, factory or nn.Module instance."""
    if isinstance(obj, nn.Module):
        instance = obj
        return ModelSpec(ref, lambda: instance, title=type(obj).__name__, origin=origin, instance=True)
    if not callable(obj):
        raise UsageError(f"model {ref} is a {type(obj).__name__}, not a class, a factory or an nn.Module")
    switches = {"init"} | ({"batchnorm", "dropout", "skip"} & accepted_keywords(obj))
    doc = (inspect.getdoc(obj) or "").strip().splitlines()
    return ModelSpec(ref, obj, title=getattr(obj, "__name__", ref), summary=doc[0] if doc else "",
                     switches=frozenset(switches), origin=origin)


def import_object(ref: str):
    """`package.module:attribute` -> the object. Only sys.path is searched, never a run folder."""
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"model '{ref}': an import path is written module:attribute, e.g. mynet:TinyNet")
    if module_name == "__main__":
        main = sys.modules.get("__main__")
        if main is None or not hasattr(main, attribute.split(".")[0]):
            name = attribute.split('.')[-1]
            raise UsageError(f"model {ref} was defined in a notebook or script (__main__); pass the class again, "
                             f"e.g. cifarlab.load_run(path, model={name})",
                             cli=f"model {ref} was defined in a notebook or script (__main__), which the command "
                                 f"line cannot import: from Python, cifarlab.load_run(path, model={name}); or move "
                                 f"{name} into a module and train it as module:{name}")
        obj = main
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise UsageError(f"model {ref}: cannot import module '{module_name}' ({e}); put it on PYTHONPATH "
                             "or in the current folder") from None
    for part in attribute.split("."):
        if part == "<locals>" or not hasattr(obj, part):
            raise UsageError(f"model {ref}: '{module_name}' has no attribute '{attribute}' that can be imported; "
                             "pass the class itself (model=...)",
                             cli=f"model {ref}: '{module_name}' has no attribute '{attribute}' that can be imported; "
                                 f"check the spelling, and define it at the top level of the module {module_name}")
        obj = getattr(obj, part)
    return obj


_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Register the models that installed packages declare in the `cifarlab.models` group.

    Each entry point names a factory (or a module that calls register_model). A package that
    fails to import is reported on stderr and skipped. Returns the names it added.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in MODELS:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break cifarlab
            print(f"cifarlab: warning: model plug-in {ep.name} = {ep.value} failed to load "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
            continue
        if ep.name not in MODELS:   # the module may have registered itself with @register_model
            MODELS[ep.name] = spec_for_object(ep.name, obj, f"entry point {ep.name} = {ep.value}")
        added.append(ep.name)
    return added


def model_spec(ref: str, supplied=None) -> ModelSpec:
    """The entry for a name, an import path or a supplied Python object; one line if there is none."""
    if supplied is not None:
        return spec_for_object(ref, supplied, "Python object")
    if ref not in MODELS:
        load_entry_points()
    if ref in MODELS:
        return MODELS[ref]
    if ":" in ref:
        return spec_for_object(ref, import_object(ref), "import path")
    raise UsageError(f"unknown model '{ref}' (choose from {', '.join(MODELS)}, or give your own as "
                     "module:factory)")


def check_switches(spec: ModelSpec, batchnorm: bool = True, dropout: bool = True, init: str = "auto",
                   skip: bool = True) -> None:
    """Refuse, in one line, a switch the model does not have (it would be silently ignored)."""
    asked = [s for s, on in (("batchnorm", not batchnorm), ("dropout", not dropout), ("skip", not skip),
                             ("init", init not in ("auto", spec.default_init))) if on]
    for switch in asked:
        if switch not in spec.switches:
            flag = SWITCH_FLAGS[switch] + (f" {init}" if switch == "init" else "")
            has = ", ".join(s for s in SWITCHES if s in spec.switches) or "none"
            raise UsageError(f"{flag}: model '{spec.name}' has no {switch} switch (its switches: {has})")
    if init not in INITS + ("auto",):
        raise UsageError(f"unknown init '{init}' (choose from auto, {', '.join(INITS)})")


def check_model_args(spec: ModelSpec, model_args: dict | None) -> None:
    """Every --model-arg must be a keyword the factory takes (an nn.Module instance takes none), and not one
    that cifarlab passes itself from the data or the switches (two values for one argument)."""
    accepted, passed = accepted_keywords(spec.build), passed_keywords(spec.build)
    catch_all = takes_any_keyword(spec.build)
    for key in model_args or {}:
        if key in passed:
            source = "from the dataset" if key not in SWITCH_FLAGS else f"and {SWITCH_FLAGS[key]} turns it off"
            raise UsageError(f"--model-arg {key}: cifarlab passes {key} to model '{spec.name}' itself, {source}; "
                             "leave it out")
        if key not in accepted and not catch_all:
            raise UsageError(f"--model-arg {key}: model '{spec.name}' takes no such argument "
                             f"(it takes: {', '.join(sorted(accepted - passed)) or 'none'})")


def build_model(ref: str, num_classes: int, in_channels: int = 3, image_size: int = 32, batchnorm: bool = True,
                init: str = "auto", dropout: bool = True, model_args: dict | None = None,
                supplied=None, dataset: str | None = None, skip: bool = True) -> nn.Module:
    """Build a model; `init="auto"` uses the scheme its entry declares (the article's, for its models).

    The model is then checked to turn one batch of [in_channels, image_size, image_size] images into
    [batch, num_classes] logits (dataset: its name, for that message)."""
    spec = model_spec(ref, supplied)
    check_switches(spec, batchnorm, dropout, init, skip)
    if image_size < spec.min_size:
        raise UsageError(f"model '{ref}' needs inputs of at least {spec.min_size}x{spec.min_size}, "
                         f"got {image_size}x{image_size}")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
               "batchnorm": batchnorm, "dropout": dropout, "skip": skip}
    check_model_args(spec, model_args)
    passed = passed_keywords(spec.build)
    kwargs = {k: v for k, v in offered.items() if k in passed} | dict(model_args or {})
    model, used = _call_factory(spec, ref, kwargs, optional=passed - accepted_keywords(spec.build))
    if not isinstance(model, nn.Module):
        raise UsageError(f"model '{ref}' returned a {type(model).__name__}, not a torch.nn.Module")
    model = initialize(model, spec.default_init if init == "auto" else init)
    refused = "in_channels" in kwargs and "in_channels" not in used
    hint = (f"; its factory refused in_channels={in_channels}: pass its own argument for the input channels "
            f"with --model-arg (timm's is in_chans={in_channels})") if refused else ""
    check_output(model, ref, num_classes, in_channels, image_size, dataset, used,
                 None if spec.instance else accepted_keywords(spec.build), hint)
    return model


def _call_factory(spec: ModelSpec, ref: str, kwargs: dict, optional: set[str]) -> tuple[nn.Module, dict]:
    """(spec.build(**kwargs), the keywords it took). A keyword that went in through **kwargs only (`optional`)
    and is refused further down (timm's ResNet names its input channels in_chans) is left out and the call made
    again: the check of one batch that follows still catches a model that does not fit the data."""
    try:
        return spec.build(**kwargs), kwargs
    except UsageError:
        raise
    except TypeError as e:
        refused = next((k for k in optional if f"unexpected keyword argument '{k}'" in str(e)), None)
        if refused is not None:
            return _call_factory(spec, ref, {k: v for k, v in kwargs.items() if k != refused}, optional - {refused})
        raise UsageError(f"model '{ref}' could not be built with {kwargs} ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - the user's constructor: say which and why, in one line
        raise UsageError(f"model '{ref}' could not be built with {kwargs} ({type(e).__name__}: {e})") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
