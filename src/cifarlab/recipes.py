"""Recipe files (TOML) read, and a new run's TrainConfig built from them: defaults <- recipe <- overrides."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from cifarlab.errors import UsageError
from cifarlab.settings import FIELD_TYPES, NOT_IN_RECIPES, TrainConfig
from cifarlab.validation import validate


def recipe_dir():
    return resources.files("cifarlab") / "recipes"


def list_recipes() -> dict[str, dict]:
    """Named recipes shipped with cifarlab: name -> the settings it makes."""
    out = {}
    for entry in sorted(recipe_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = _parse_toml(entry.read_text(), entry.name)
    return out


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: invalid TOML ({e})") from None


def _recipe_data(name_or_path: str) -> tuple[dict, str]:
    """(everything the recipe file holds, where it came from), from a shipped name or a .toml path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{path}: recipe file not found")
        try:
            return _parse_toml(path.read_text(), str(path)), str(path)
        except UnicodeDecodeError:
            raise UsageError(f"{path}: recipe file is not UTF-8 text") from None
    recipes = list_recipes()
    if name_or_path not in recipes:
        raise UsageError(f"unknown recipe '{name_or_path}' (choose from {', '.join(recipes)})")
    return recipes[name_or_path], name_or_path


def device_kind(device: str | None) -> str:
    """The kind of device a run with --device `device` trains on: auto is CUDA, else Apple's MPS, else the CPU,
    in the order training/device.py resolves it (a layer above this one)."""
    if device in ("cpu", "cuda", "mps"):
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def chosen_recipe(name_or_path: str, device: str | None = "auto") -> str:
    """The recipe a run gets from `name_or_path`: itself, or where it chooses by device (fast94: its
    [by_device] table), the one named for the device the run trains on."""
    data, source = _recipe_data(name_or_path)
    by_device = data.get("by_device")
    if by_device is None:
        return name_or_path
    kind = device_kind(device)
    if not isinstance(by_device, dict) or kind not in by_device:
        raise UsageError(f"{source}: its [by_device] table names no recipe for {kind}")
    chosen = by_device[kind]
    if _recipe_data(chosen)[0].get("by_device") is not None:
        raise UsageError(f"{source}: [by_device] names {chosen}, which chooses by device itself")
    return chosen


def recipe_models(name_or_path: str) -> list[str]:
    """The models a recipe was made for (its `models` list; empty: any)."""
    models = _recipe_data(name_or_path)[0].get("models", [])
    return list(models) if isinstance(models, list) else []


def load_recipe(name_or_path: str, device: str | None = "auto") -> dict:
    """A recipe's settings (validated keys), from a shipped name or a .toml path; one that chooses by device
    gives the settings of the one it chooses for `device`."""
    data, source = _recipe_data(chosen_recipe(name_or_path, device))
    settings = {k: v for k, v in data.items() if k not in ("description", "models", "target")}
    for key in settings:
        if key not in FIELD_TYPES or key in NOT_IN_RECIPES:
            raise UsageError(f"{source}: unknown recipe setting '{key}'")
    return settings


def build_config(overrides: dict, recipe: str | None = None, model=None) -> TrainConfig:
    """Defaults <- recipe <- overrides (values that are not None), then validated.

    model: the Python object behind a `module:attribute` model name, when the caller has it.
    """
    asked = recipe
    if recipe:     # the run records the recipe it got (fast94 on a CPU: fast94-muon); --resume reads that record
        recipe = chosen_recipe(recipe, overrides.get("device"))
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["recipe"] = recipe
    if asked != recipe:
        values["recipe_chosen_by"] = asked
    unknown = [k for k in values if k not in FIELD_TYPES]
    if unknown:
        raise UsageError(f"unknown setting '{unknown[0]}' (settings are the `cifarlab train` flags, "
                         "with _ for -: e.g. batch_size, label_smoothing)")
    cfg = TrainConfig(**values)
    validate(cfg, model)
    return cfg


def train_config(overrides: dict, recipe: str | None = None, default_recipe: bool = False, model=None,
                 note=print) -> TrainConfig:
    """The settings of a `train` / `ablate`: a recipe made for one model names it when none is given.

    default_recipe: without --recipe, use `article-<model>` where there is one (what ablate compares).
    note: where to say that a recipe was made for another model.
    """
    made_for = recipe_models(recipe) if recipe else []
    overrides = dict(overrides)
    if overrides.get("model") is None and len(made_for) == 1:   # a recipe made for one model (fast94) names it
        overrides["model"] = made_for[0]
    if overrides.get("model") is None or overrides.get("dataset") is None:
        raise UsageError("needs a model and a dataset (see `cifarlab models`)")
    if made_for and overrides["model"] not in made_for and not overrides.get("quiet"):
        note(f"cifarlab: note: recipe {recipe} was made for {', '.join(made_for)}, not {overrides['model']}; "
             "its settings may not suit it")
    if isinstance(overrides.get("augment"), str):
        overrides["augment"] = parse_augment(overrides["augment"])
    if recipe is None and default_recipe and f"article-{overrides['model']}" in list_recipes():
        recipe = f"article-{overrides['model']}"
    chosen = chosen_recipe(recipe, overrides.get("device")) if recipe else None
    if chosen != recipe and not overrides.get("quiet"):
        note(f"cifarlab: note: recipe {recipe} on {device_kind(overrides.get('device'))} is {chosen} "
             f"({recipe} chooses by device: `cifarlab recipes`)")
    return build_config(overrides, recipe, model)


def parse_augment(text: str) -> list[str]:
    """'crop,flip' -> ['crop', 'flip']; 'none' or '' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]
