"""The shape of the source: no file in src/ over 400 lines and no function over 60 (docs/architecture.md), so
each file does one job and each function reads on one screen. Offenders are named, with their sizes."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def long_functions(path: Path, root: Path = SRC) -> list[str]:
    """Every function (methods and nested ones included) longer than the limit, from its `def` line (its
    decorators not counted) to its last line, as "file:line name (N lines)"."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_source_is_found():
    assert len(python_files()) > 40 and (SRC / "cifarlab" / "__init__.py") in python_files()


def test_no_file_in_src_is_over_400_lines():
    long = [f"{p.relative_to(SRC)} ({n} lines)" for p in python_files()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert long == [], f"over {MAX_FILE_LINES} lines: " + ", ".join(long)


def test_no_function_in_src_is_over_60_lines():
    long = [entry for p in python_files() for entry in long_functions(p)]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def test_the_counting_names_a_long_function(tmp_path):
    # The checks above pass on a clean tree; this shows they would name an offender, counted from def to end.
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    method = "".join("    " + line + "\n" for line in body.splitlines()) + "        return x0\n"
    (tmp_path / "m.py").write_text(f"def short():\n{body}\n\nclass C:\n    @property\n    def long(self):\n{method}")
    assert long_functions(tmp_path / "m.py", tmp_path) == [f"m.py:65 long ({MAX_FUNCTION_LINES + 1} lines)"]
