"""docs/fast94.md states fast94's settings: every one it names must exist, with the value it states, in the file
it names; every file it names must exist; and every setting of the recipe and constant of the model is on it."""

import ast
import importlib
import math
import operator
import re
from pathlib import Path

import pytest

from cifarlab.recipes import build_config, load_recipe
from cifarlab.settings import FIELD_TYPES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "fast94.md"
RECIPE = "src/cifarlab/recipes/fast94-sgd.toml"
DEFAULTS = "src/cifarlab/settings.py"
COLUMNS = ["step", "trick", "source", "setting", "value", "set in", "done in"]
# The modules whose every constant is a fast94 setting: each must be on the page.
CONSTANT_MODULES = ("src/cifarlab/models/fast94.py", "src/cifarlab/training/lookahead.py")
OPERATORS = {ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mult: operator.mul}


def page_rows(text: str) -> list[dict]:
    """The rows of the page's settings table (the one whose header is COLUMNS), cells without backticks."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if [c.strip() for c in line.strip("|").split("|")] == COLUMNS)
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"docs/fast94.md: a row without {len(COLUMNS)} cells: {line}"
        rows.append(dict(zip(COLUMNS, cells)))
    return rows


def parse_value(text: str):
    """A value as the page writes it: a Python or TOML literal (true/false), or numbers joined by /, ** or *."""
    text = {"true": "True", "false": "False"}.get(text, text)

    def value(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        return ast.literal_eval(node)
    return value(ast.parse(text, mode="eval").body)


def same(stated, actual) -> bool:
    if isinstance(actual, (list, tuple)):
        return isinstance(stated, (list, tuple)) and len(stated) == len(actual) and all(
            same(s, a) for s, a in zip(stated, actual))
    if isinstance(actual, bool) or isinstance(stated, bool):
        return stated is actual
    if isinstance(actual, float) or isinstance(stated, float):
        return isinstance(stated, (int, float)) and math.isclose(stated, actual, rel_tol=1e-12)
    return type(stated) is type(actual) and stated == actual


def module_of(path: str):
    """The module behind a file of src/ (src/cifarlab/models/fast94.py -> cifarlab.models.fast94)."""
    return importlib.import_module(path.removeprefix("src/").removesuffix(".py").replace("/", "."))


def actual_value(row: dict, recipe: dict, cfg: TrainConfig):
    """What the code holds for the row's setting, read from the file the row says holds it."""
    name, held_in = row["setting"], row["set in"]
    if held_in == RECIPE:
        assert name in recipe, f"docs/fast94.md: '{name}' is not set in {RECIPE}"
        assert same(recipe[name], getattr(cfg, name)), f"{name}: the recipe's value is not the one a run gets"
        return recipe[name]
    if held_in == DEFAULTS:
        assert name in FIELD_TYPES, f"docs/fast94.md: '{name}' is not a setting of TrainConfig"
        assert name not in recipe, f"docs/fast94.md: '{name}' is set in {RECIPE}, not {DEFAULTS}"
        return getattr(cfg, name)
    module = module_of(held_in)
    assert name.isupper() and hasattr(module, name), f"docs/fast94.md: {held_in} has no constant '{name}'"
    return getattr(module, name)


def check_page(text: str, root: Path = ROOT) -> None:
    """Raise AssertionError on the first thing docs/fast94.md states that the code (in `root`) does not hold."""
    recipe = load_recipe(str(root / RECIPE))
    cfg = build_config({"model": "fast94"}, str(root / RECIPE))
    rows = page_rows(text)
    for row in rows:
        for column in ("set in", "done in"):
            assert (root / row[column]).is_file(), f"docs/fast94.md names {row[column]}, which does not exist"
        assert row["trick"] and row["source"], f"docs/fast94.md: '{row['setting']}' without its trick or source"
        stated, actual = parse_value(row["value"]), actual_value(row, recipe, cfg)
        assert same(stated, actual), f"docs/fast94.md: {row['setting']} = {row['value']}, the code holds {actual!r}"
    named = {(row["setting"], row["set in"]) for row in rows}
    missing = [key for key in recipe if (key, RECIPE) not in named]
    for path in CONSTANT_MODULES:
        module = module_of(path)
        missing += [name for name, value in vars(module).items()
                    if name.isupper() and isinstance(value, (int, float, tuple)) and (name, path) not in named]
    assert not missing, f"docs/fast94.md does not state {', '.join(missing)}"


def test_every_setting_on_the_page_exists_with_the_value_it_states():
    text = PAGE.read_text()
    assert len(page_rows(text)) >= 30
    check_page(text)


@pytest.mark.parametrize("before, after, message", [
    ("| `lr` | `1.5` |", "| `lr` | `1.4` |", "lr = 1.4, the code holds 1.5"),
    ("| `WIDTHS` | `(64, 256, 256)` |", "| `WIDTHS` | `(64, 256, 128)` |", "WIDTHS = (64, 256, 128)"),
    ("| `MAX_DECAY` | `0.95 ** 5` |", "| `MAX_DECAY` | `0.95 ** 4` |", "MAX_DECAY = 0.95 ** 4"),
    ("| `tta` | `true` |", "| `tta` | `false` |", "tta = false"),
    ("| `0.04` | `src/cifarlab/settings.py`", "| `0.04` | `src/cifarlab/recipes/fast94-sgd.toml`",
     "'onecycle_start' is not set in"),
    ("`src/cifarlab/training/optim.py` |\n| 6 lookahead", "`src/cifarlab/training/optimizer.py` |\n| 6 lookahead",
     "names src/cifarlab/training/optimizer.py, which does not exist"),
])
def test_a_page_that_disagrees_with_the_code_is_refused(before, after, message):
    text = PAGE.read_text()
    assert text.count(before) == 1
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_page(text.replace(before, after))


@pytest.mark.parametrize("before, after, message", [
    ("lr = 1.5", "lr = 1.6", "lr = 1.5, the code holds 1.6"),
    ("tta_shift = 1", "tta_shift = 2", "tta_shift = 1, the code holds 2"),
    ("\nlookahead = true", "\nlookahead = true\nonecycle_start = 0.04", "'onecycle_start' is set in"),
])
def test_a_recipe_that_disagrees_with_the_page_is_refused(tmp_path, before, after, message):
    # The recipe changed and the page did not: a copy of the repository's files with the recipe edited.
    text = PAGE.read_text()
    for path in {row[c] for row in page_rows(text) for c in ("set in", "done in")}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    check_page(text, tmp_path)       # the unedited copy agrees
    recipe = (ROOT / RECIPE).read_text()
    assert recipe.count(before) == 1
    (tmp_path / RECIPE).write_text(recipe.replace(before, after))
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_page(text, tmp_path)


def test_a_recipe_setting_missing_from_the_page_is_refused():
    text = PAGE.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 6 lookahead") and "`lookahead`" in line)
    with pytest.raises(AssertionError, match="does not state lookahead"):
        check_page(text.replace(row + "\n", ""))
