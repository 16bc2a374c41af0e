"""cifarlab: train, compare and ablate image classifiers on the small-image benchmarks and your own images.

    import cifarlab
    run = cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn")
    run.plot()

    cifarlab.train("basic-cnn", "cifar10", data_dir=cifarlab.sample_dir(), epochs=2)   # offline: the shipped sample

The names below load on first use, so `import cifarlab` (and `cifarlab --help`) stays fast.
"""

__version__ = "0.1.0"

from cifarlab.errors import CifarlabError, UsageError  # noqa: E402  (no torch: cheap)

_API = {"train": "cifarlab.api", "resume": "cifarlab.api", "compare": "cifarlab.api", "ablate": "cifarlab.api",
        "reproduce": "cifarlab.api", "load_run": "cifarlab.run", "Run": "cifarlab.run",
        "register_model": "cifarlab.models", "TrainConfig": "cifarlab.config", "sample_dir": "cifarlab.sample"}

__all__ = ["CifarlabError", "UsageError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
