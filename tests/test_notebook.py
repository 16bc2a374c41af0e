"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel on the shipped sample, at a tiny budget."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"

pytestmark = pytest.mark.slow          # a Jupyter kernel runs the whole notebook, trainings included


def test_quickstart_notebook_runs_and_shows_its_tables_and_figures(cifar_sample, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    budget = next(cell for cell in notebook.cells if "BUDGET = dict(" in cell.source)
    budget.source = budget.source.replace("BUDGET = dict(epochs=3)", "BUDGET = dict(epochs=1)")
    monkeypatch.setenv("CIFARLAB_DATA", str(cifar_sample))
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    def outputs(marker):
        cell = next(c for c in notebook.cells if c.cell_type == "code" and marker in c.source)
        return cell.outputs

    def text(marker):
        return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs(marker))

    def images(marker):
        return sum("image/png" in o.get("data", {}) for o in outputs(marker))

    assert "final test" in text('basic = cifarlab.train("basic-cnn"')
    assert "COMPARISON" in text("comparison = cifarlab.compare") and images("comparison = cifarlab.compare") == 1
    assert images("mine.plot()") == 1
    assert "accuracy" in text("evaluation = mine.evaluate()") and images("evaluation = mine.evaluate()") == 1
    assert (tmp_path / "runs" / "nb-mine" / "summary.json").is_file()
