"""cifarlab as a library: a user's own model file, a notebook class, plug-in packages, the Python API,
and checkpoint errors that say what happened. Real cifar-mini images, real subprocesses."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cifarlab
from cifarlab.errors import UsageError
from cifarlab.run import load_checkpoint, load_run

from conftest import run_cli, slow_except, without_timing

MYNET = textwrap.dedent('''
    """A user's own models, in their own file."""
    from torch import nn


    class TinyNet(nn.Module):
        """Two conv-pool blocks, dropout, linear."""

        def __init__(self, num_classes=10, in_channels=3, image_size=32, dropout=True, width=16):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
            self.drop = nn.Dropout(0.2 if dropout else 0.0)
            self.head = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

        def forward(self, x):
            return self.head(self.drop(self.features(x)))


    def plain(num_classes=10, in_channels=3, image_size=32):
        """No switches: a linear classifier on the pixels."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))
''')
BUDGET = ["--dataset", "cifar10", "--epochs", "3", "--limit-train", "2000", "--batch-size", "64", "--quiet"]
def rows(out):
    return without_timing(load_run(out).metrics)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder holding mynet.py."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "mynet.py").write_text(MYNET)
    return folder


@pytest.fixture(scope="module")
def tiny_run(project, cifar_mini):
    """`cifarlab train --model mynet:TinyNet` run from the user's folder, uninterrupted (a training in a subprocess:
    the tests taking it are marked slow)."""
    result = run_cli("train", "--model", "mynet:TinyNet", "--model-arg", "width=8", *BUDGET,
                     "--data-dir", str(cifar_mini), "--out", "tiny", cwd=project)
    assert result.returncode == 0, result.stderr
    return project / "tiny"


@pytest.mark.slow
def test_own_model_file_trains_beats_chance_and_records_how_it_was_built(tiny_run):
    run = load_run(tiny_run)
    assert run.summary["final_test_acc"] > 20.0          # 10 classes: chance is 10%
    assert run.config["model"] == "mynet:TinyNet" and run.config["model_args"] == {"width": 8}
    assert run.config["model_origin"] == "import path"
    assert run.summary["params"] == (3 * 9 + 1) * 8 + (8 * 9 + 1) * 16 + 16 * 8 * 8 * 10 + 10


@pytest.mark.slow
def test_own_model_evaluates_predicts_and_exports_from_its_record(tiny_run, project, cifar10_mini):
    from PIL import Image

    summary = load_run(tiny_run).summary
    result = run_cli("evaluate", "tiny", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(summary["final_test_acc"], abs=0.101)

    test = cifar10_mini.test
    for i in range(3):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(project / f"img{i}.png")
    result = run_cli("predict", "tiny", "img0.png", "img1.png", "img2.png", "--top-k", "2", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["image"] for p in predictions] == ["img0.png", "img1.png", "img2.png"]
    assert all(len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"] for p in predictions)

    result = run_cli("export", "tiny", "--format", "onnx", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("onnx: tiny/model.onnx") and (project / "tiny" / "model.onnx").stat().st_size > 0


@pytest.mark.slow
def test_own_model_resumes_after_sigint_exactly(tiny_run, project, cifar_mini, monkeypatch):
    monkeypatch.syspath_prepend(str(project))   # this process compares the weights: it imports mynet too
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", "--model", "mynet:TinyNet", "--model-arg",
                             "width=8", *BUDGET, "--data-dir", str(cifar_mini), "--out", "stopped"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = project / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Resume with: cifarlab train --resume stopped" in stderr
    result = run_cli("train", "--resume", "stopped", "--quiet", cwd=project)
    assert result.returncode == 0, result.stderr
    assert rows(project / "stopped") == rows(tiny_run)
    a, b = load_run(tiny_run).model(), load_run(project / "stopped").model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_the_class_as_a_python_object_gives_the_cli_metrics(tiny_run, project, cifar_mini, monkeypatch,
                                                           tmp_path):
    monkeypatch.syspath_prepend(str(project))
    import mynet

    run = cifarlab.train(mynet.TinyNet, "cifar10", data_dir=cifar_mini, epochs=3, limit_train=2000,
                         batch_size=64, quiet=True, model_args={"width": 8}, out=tmp_path / "py")
    assert rows(run.path) == rows(tiny_run)
    assert run.config["model"] == "mynet:TinyNet"


@pytest.mark.slow
def test_ablate_uses_the_dropout_switch_of_a_factory_and_skips_it_where_there_is_none(project, cifar_sample):
    common = ["--dataset", "cifar10", "--data-dir", str(cifar_sample), "--epochs", "1", "--limit-train", "100",
              "--seeds", "1", "--quiet"]
    result = run_cli("ablate", "--model", "mynet:TinyNet", "--without", "dropout", *common, "--out", "ab", cwd=project)
    assert result.returncode == 0, result.stderr
    ablation = json.loads((project / "ab" / "ablation.json").read_text())
    assert [v["variant"] for v in ablation["variants"]] == ["full", "no-dropout"] and ablation["skipped"] == []
    assert load_run(project / "ab" / "no-dropout" / "seed-0").config["dropout"] is False

    result = run_cli("ablate", "--model", "mynet:plain", "--without", "dropout,augment", "--augment", "flip",
                     *common, "--out", "ab2", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Skipped (the model has no such switch, or the recipe does not use it): dropout" in result.stdout
    ablation = json.loads((project / "ab2" / "ablation.json").read_text())
    assert [v["variant"] for v in ablation["variants"]] == ["full", "no-augment"]


# quick: a registered model without the switch
@pytest.mark.parametrize("args, line", slow_except({0}, [
    (["--model", "fast94", "--no-batchnorm"], "--no-batchnorm: model 'fast94' has no batchnorm switch "
                                              "(its switches: none)"),
    (["--model", "resnet18", "--no-dropout"], "--no-dropout: model 'resnet18' has no dropout switch "
                                              "(its switches: batchnorm, skip, init)"),
    (["--model", "basic-cnn", "--no-batchnorm"], "--no-batchnorm: model 'basic-cnn' has no batchnorm switch "
                                                 "(its switches: dropout, init)"),
    (["--model", "mynet:plain", "--no-dropout"], "--no-dropout: model 'mynet:plain' has no dropout switch "
                                                 "(its switches: init)"),
    (["--model", "nosuchmodule:Net"], "model nosuchmodule:Net: cannot import module 'nosuchmodule'"),
    (["--model", "mynet:Nope"], "model mynet:Nope: 'mynet' has no attribute 'Nope'"),
    (["--model", "mynet:TinyNet", "--model-arg", "depth=3"], "--model-arg depth: model 'mynet:TinyNet' takes no "
                                                             "such argument (it takes: width)"),
]))
def test_a_switch_or_model_that_cannot_work_is_refused_in_one_line(project, args, line):
    result = run_cli("train", *args, "--dataset", "cifar10", "--epochs", "1", cwd=project)
    assert result.returncode == 2
    assert result.stderr.startswith(f"cifarlab: error: {line}") and result.stderr.count("\n") == 1


def test_a_notebook_class_is_recorded_as_main_and_supplied_again(cifar_sample, tmp_path, monkeypatch):
    from torch import nn

    class NotebookNet(nn.Module):
        def __init__(self, num_classes=10, in_channels=3):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(8, num_classes))

        def forward(self, x):
            return self.body(x)

    # What a Jupyter cell does: the class lives in __main__.
    NotebookNet.__module__, NotebookNet.__qualname__ = "__main__", "NotebookNet"
    monkeypatch.setattr(sys.modules["__main__"], "NotebookNet", NotebookNet, raising=False)
    run = cifarlab.train(NotebookNet, "cifar10", data_dir=cifar_sample, epochs=1, quiet=True, out=tmp_path / "nb")
    assert run.config["model"] == "__main__:NotebookNet"
    monkeypatch.delattr(sys.modules["__main__"], "NotebookNet")   # a new kernel: the class is gone
    with pytest.raises(UsageError, match=r"defined in a notebook or script \(__main__\); pass the class again"):
        load_run(tmp_path / "nb").model()
    again = load_run(tmp_path / "nb", model=NotebookNet)
    assert again.evaluate()["accuracy"] == pytest.approx(run.summary["final_test_acc"], abs=1.01)  # 1 of 100 images


@pytest.mark.slow
def test_a_module_in_a_run_folder_is_never_imported(tiny_run, tmp_path):
    run = tmp_path / "copied"
    (run / "checkpoints").mkdir(parents=True)
    config = json.loads((tiny_run / "config.json").read_text())
    config["model"] = "evilnet:Net"
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoints" / "best.pt").write_bytes((tiny_run / "checkpoints" / "best.pt").read_bytes())
    (run / "evilnet.py").write_text("import pathlib; pathlib.Path(__file__).with_name('PWNED').touch()\n"
                                    "Net = None\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("evaluate", str(run), cwd=elsewhere)
    assert result.returncode == 2
    assert result.stderr.startswith("cifarlab: error: model evilnet:Net: cannot import module 'evilnet'")
    assert not (run / "PWNED").exists()


@pytest.mark.slow
def test_a_plugin_package_adds_a_model_through_its_entry_point(tmp_path, cifar_sample):
    site = tmp_path / "site"
    (site / "plugnet").mkdir(parents=True)
    (site / "plugnet" / "__init__.py").write_text(textwrap.dedent('''
        from torch import nn

        def make(num_classes=10, in_channels=3, image_size=32, batchnorm=True):
            """A plug-in linear model."""
            norm = [nn.BatchNorm1d(in_channels * image_size ** 2)] if batchnorm else []
            return nn.Sequential(nn.Flatten(), *norm, nn.Linear(in_channels * image_size ** 2, num_classes))
    '''))
    info = site / "plugnet-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugnet\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cifarlab.models]\nplug-linear = plugnet:make\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    result = run_cli("models", "--json", env=env)
    assert result.returncode == 0, result.stderr
    entry = next(r for r in json.loads(result.stdout) if r["name"] == "plug-linear")
    assert entry["params"] == 2 * 3072 + 3072 * 10 + 10                  # BatchNorm1d(3072) + Linear(3072, 10)
    assert entry["switches"] == ["batchnorm", "init"] and entry["description"] == "A plug-in linear model."
    result = run_cli("train", "--model", "plug-linear", "--no-batchnorm", "--dataset", "cifar10", "--data-dir",
                     str(cifar_sample), "--epochs", "1", "--limit-train", "100", "--quiet", "--out",
                     str(tmp_path / "plug"), env=env)
    assert result.returncode == 0, result.stderr
    assert load_run(tmp_path / "plug").summary["params"] == 3072 * 10 + 10


@pytest.mark.slow
def test_checkpoint_errors_say_what_happened_and_never_suggest_turning_safety_off(tiny_run, project, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    text = tmp_path / "text.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(UsageError, match="not a PyTorch checkpoint, or damaged") as damaged:
        load_checkpoint(text)
    truncated = tmp_path / "truncated.pt"
    whole = (tiny_run / "checkpoints" / "best.pt").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UsageError, match="not a PyTorch checkpoint, or damaged"):
        load_checkpoint(truncated)

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": Payload(), "config": {}}, unsafe)
    with pytest.raises(UsageError, match="refused: it holds objects that could run code when loaded; "
                                         "cifarlab loads weights only") as refused:
        load_checkpoint(unsafe)

    other = tmp_path / "other" / "checkpoints"
    other.mkdir(parents=True)
    (tmp_path / "other" / "config.json").write_text((tiny_run / "config.json").read_text())
    saved = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    saved["model"]["head.weight"] = torch.zeros(10, 99)
    saved["model"]["extra.bias"] = torch.zeros(3)
    torch.save(saved, other / "best.pt")
    with pytest.raises(UsageError, match=r"a checkpoint of another model or version: unexpected extra\.bias \(1\); "
                                         r"other shape head\.weight \(1\)") as mismatch:
        load_run(tmp_path / "other").model()
    for error in (damaged, refused, mismatch):
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_python_api_raises_usage_errors_with_the_cli_line(project):
    with pytest.raises(UsageError) as error:
        cifarlab.train("basic-cnn", "cifar10", lr=-1.0)
    assert isinstance(error.value, ValueError)
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--lr", "-1", cwd=project)
    assert result.stderr == f"cifarlab: error: {error.value}\n"
    with pytest.raises(UsageError, match="unknown setting 'learning_rate'"):
        cifarlab.train("basic-cnn", "cifar10", learning_rate=0.1)
    with pytest.raises(UsageError, match="--no-batchnorm: model 'fast94' has no batchnorm switch"):
        cifarlab.train("fast94", "cifar10", batchnorm=False)


@pytest.mark.slow
def test_run_objects_plot_evaluate_predict_export_and_compare(tiny_run, project, cifar10_mini, tmp_path,
                                                               monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    from matplotlib.figure import Figure
    from PIL import Image

    run = load_run(tiny_run)
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3] and isinstance(run.plot(), Figure)
    evaluation = run.evaluate(out=tmp_path / "ev")
    assert evaluation["accuracy"] == pytest.approx(run.summary["final_test_acc"], abs=0.101)
    assert str(evaluation).startswith("mynet:TinyNet on cifar10 test (1,000 images): accuracy")
    assert isinstance(evaluation.plot(), Figure)

    test = cifar10_mini.test
    hwc = test.images[:4].permute(0, 2, 3, 1).numpy()
    from_arrays = run.predict(hwc, top_k=1)
    from_pil = run.predict([Image.fromarray(a) for a in hwc], top_k=1)
    from_nchw = run.predict(test.images[:4], top_k=1)
    assert [p["top"] for p in from_arrays] == [p["top"] for p in from_pil] == [p["top"] for p in from_nchw]
    with pytest.raises(UsageError, match="images must be uint8"):
        run.predict(hwc.astype(np.float32))
    exported = run.export("safetensors", tmp_path / "w.safetensors")
    assert exported.path.stat().st_size > 0 and str(exported).startswith("safetensors: ")

    comparison = cifarlab.compare([run, tiny_run])
    assert [type(r) for r in comparison.runs] == [cifarlab.Run] * 2      # a folder comes back as the user's Run
    cli = run_cli("compare", str(tiny_run), str(tiny_run))
    assert cli.stdout == str(comparison) and "COMPARISON" in cli.stdout and isinstance(comparison.plot(), Figure)


def test_arrays_train_like_a_registered_dataset(cifar10_mini, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    ds = cifar10_mini
    arrays = (ds.train.images[:2000].permute(0, 2, 3, 1).numpy(), ds.train.labels[:2000].numpy(),
              ds.test.images.permute(0, 2, 3, 1).numpy(), ds.test.labels.numpy())
    run = cifarlab.train("basic-cnn", arrays, epochs=2, quiet=True, out=tmp_path / "arrays")
    assert run.config["dataset"].startswith("npz:") and run.summary["final_test_acc"] > 20.0
    assert run.dataset_info().mean == pytest.approx(tuple(ds.train.images[:2000].float().div(255).mean((0, 2, 3))
                                                          .tolist()), abs=1e-4)


SRC = Path(cifarlab.__file__).parent
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """src/cifarlab/study/runs.py -> cifarlab.study.runs; a package's __init__.py is the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def src_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every cifarlab module a file imports, at the top or inside a function, read with ast: `from cifarlab
    import api` imports cifarlab.api, `from cifarlab.models import build_model` the package cifarlab.models."""
    import ast

    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:      # relative: from .x import y
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    found = set()
    for name in names:
        while name and name not in modules:      # cifarlab.models.build_model -> cifarlab.models
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    modules = src_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def declared_layers() -> list[list[str]]:
    """docs/architecture.md's layers, bottom to top: "1. `errors.py` `storage.py`: ..." -> [["cifarlab.errors",
    "cifarlab.storage"], ...]; `data/` is the package and everything in it."""
    text = ARCHITECTURE.read_text().split("## The layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in text.splitlines():
        if re.match(r"\d+\. `", line):
            names = re.findall(r"`([\w/.]+)`", line.split(":", 1)[0])
            layers.append([module_name(SRC / (n + "__init__.py" if n.endswith("/") else n)) for n in names])
    return layers


def layer_of(module: str, layers: list[list[str]]) -> int:
    """The declared layer of a module: its own entry, else its package's (the longest that matches)."""
    best = max(((len(entry), n) for n, layer in enumerate(layers) for entry in layer
                if module == entry or (entry != "cifarlab" and module.startswith(entry + "."))), default=None)
    assert best is not None, f"{module} sits in no layer of docs/architecture.md"
    return best[1]


def test_every_import_points_down_the_declared_layers():
    layers = declared_layers()
    assert len(layers) >= 10 and ["cifarlab.errors", "cifarlab.storage", "cifarlab.signals", "cifarlab"] == layers[0]
    graph = import_graph()
    assert sum(map(len, graph.values())) > 100          # the walk found the imports, inside functions too
    assert "cifarlab.evaluate" in graph["cifarlab.run"]     # Run.evaluate imports it inside the method
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if layer_of(t, layers) > layer_of(m, layers))
    assert upward == []


def test_no_module_imports_itself_in_a_circle():
    graph = import_graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert sorted(m for m in graph if m in reachable(m)) == []


def test_architecture_table_names_exactly_the_files_in_src():
    """Each row's first cell names files relative to src/cifarlab/ (`data/` is data/__init__.py)."""
    rows = [line.split("|")[1] for line in ARCHITECTURE.read_text().splitlines()
            if line.startswith("| `") and line.count("|") >= 3]
    named = {n + "__init__.py" if n.endswith("/") else n for row in rows for n in re.findall(r"`([\w/.]+)`", row)}
    files = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    assert sorted(named - files) == []           # no row names a file that is not there
    assert sorted(files - named) == []           # every file has its row


def test_report_reads_run_folders_without_importing_the_training_code():
    graph = import_graph()
    imported = set().union(*(targets for m, targets in graph.items() if m.startswith("cifarlab.report")))
    assert "cifarlab.runfolder" in imported
    assert not [m for m in imported if m.startswith("cifarlab.training")]


