"""cifarlab: train, compare and ablate image classifiers on the small-image benchmarks and your own images.

    import cifarlab
    run = cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn")
    run.plot()

    cifarlab.train("basic-cnn", "cifar10", data_dir=cifarlab.sample_dir(), epochs=2)   # offline: the shipped sample

The names below load on first use, so `import cifarlab` (and `cifarlab --help`) stays fast.
"""

__version__ = "0.2.0"

# How OpenMP's idle threads wait: None keeps OpenMP's default (spin a while, then sleep); "PASSIVE" sleeps at
# once, which leaves the cores to whatever else runs on them (two trainings at once). OpenMP reads it when
# torch loads, so it is set here, on `import cifarlab` (the CLI and the API), before torch; a value already in
# the environment wins. benchmarks/parallel_study.py --wait-policy measures a lone run with each.
OMP_WAIT_POLICY: str | None = None


def _set_wait_policy() -> None:
    import os
    import sys

    if OMP_WAIT_POLICY and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


_set_wait_policy()

from cifarlab.errors import CifarlabError, UsageError  # noqa: E402  (no torch: cheap)

_API = {"train": "cifarlab.api", "resume": "cifarlab.api", "compare": "cifarlab.api", "ablate": "cifarlab.api",
        "reproduce": "cifarlab.api", "tune": "cifarlab.api", "depth": "cifarlab.api",
        "load_run": "cifarlab.run", "Run": "cifarlab.run",
        "register_model": "cifarlab.models", "TrainConfig": "cifarlab.settings", "sample_dir": "cifarlab.sample"}

__all__ = ["CifarlabError", "UsageError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
