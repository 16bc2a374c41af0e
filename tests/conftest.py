"""Shared fixtures: synthetic files in the official formats, and real CIFAR images.

Real images come in two sizes:
- `cifar_sample`: the sample shipped inside the package (src/cifarlab/sample: 200 train and 100 test images
  of CIFAR-10 and of CIFAR-100), always present, so these tests run on a fresh clone;
- `cifar_mini`: a larger copy in the same layout (5 x 1,000 CIFAR-10 train and 1,000 test images; 5,000 and
  1,000 of CIFAR-100), for the tests whose figures need more images. It is found through CIFARLAB_TEST_DATA;
  without it, the project machines' copy beside the repository; where neither exists, those tests skip.

Tests marked `slow` (real trainings in subprocesses, torchrun, reproduce, notebook, ONNX export...) are left
out by `python3 -m pytest -q -m "not slow"`, the quick run for day-to-day work."""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The suite's own processes load the cores: the "load average" note would land in every output it checks.
os.environ["CIFARLAB_LOAD_NOTE"] = "0"


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker (and every process it starts: OMP_NUM_THREADS is inherited) gets its share
    of the cores, as a study's --jobs does (launch.threads_per_run), instead of torch's default of all of them:
    2 workers x 2 threads on 2 cores spent more than a third of the suite's time waiting on each other (5 heavy
    test files: 197 s -> 124 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers and "OMP_NUM_THREADS" not in os.environ:
        from cifarlab.study.launch import threads_per_run

        share = threads_per_run(workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


_share_the_cores()

from cifarlab.sample import DATA_DIR as SAMPLE

REPO = Path(__file__).resolve().parents[1]
MINI = Path(os.environ.get("CIFARLAB_TEST_DATA") or REPO.parent / "shared" / "data" / "cifar-mini")


@pytest.fixture(scope="session")
def cifar_sample() -> Path:
    """The real CIFAR-10/100 sample shipped with cifarlab, as a --data-dir: 200 train, 100 test images each."""
    return SAMPLE


@pytest.fixture(scope="session")
def cifar_mini() -> Path:
    """The larger real data (CIFARLAB_TEST_DATA), for tests that need more images than the sample has; skips
    where it is absent, as on a fresh clone.

    Session-scoped so that module fixtures (a run trained once per file) can take it too."""
    if not (MINI / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"no larger test data in {MINI} (set CIFARLAB_TEST_DATA to a folder in the official layout)")
    return MINI


@pytest.fixture(scope="session")
def cifar_mini_short_test(cifar_mini, tmp_path_factory) -> Path:
    """cifar-mini with its test files cut to their first 200 real images (train files whole): for studies of
    big models, whose test-set evaluation on a CPU otherwise costs more than their training."""
    root = tmp_path_factory.mktemp("cifar-mini-short-test")
    for folder, test in (("cifar-10-batches-py", "test_batch"), ("cifar-100-python", "test")):
        shutil.copytree(cifar_mini / folder, root / folder)
        with open(cifar_mini / folder / test, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        for key, value in batch.items():
            if key in (b"data", b"labels", b"fine_labels", b"coarse_labels", b"filenames"):
                batch[key] = value[:200]
        with open(root / folder / test, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.fixture(scope="session")
def cifar10_sample(cifar_sample):
    """The shipped sample's CIFAR-10 as cifarlab loads it (uint8 images, labels, classes, info)."""
    from cifarlab.data.sources import load_dataset

    return load_dataset("cifar10", cifar_sample, download_missing=False)


@pytest.fixture(scope="session")
def cifar10_mini(cifar_mini):
    """cifar-mini's CIFAR-10 as cifarlab loads it (uint8 images, labels, classes, info), read once per session."""
    from cifarlab.data.sources import load_dataset

    return load_dataset("cifar10", cifar_mini, download_missing=False)


def batches_of(dataset):
    """first(n, split="test") -> (x, y): the first n real images of a split of `dataset`, normalised with its
    mean and std as cifarlab's loader does, and their labels; n beyond the split is refused, never cut short."""
    info = dataset.info
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)

    def first(n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        images = getattr(dataset, split)
        if n > len(images):
            raise ValueError(f"{n} {split} images asked, this data has {len(images)}")
        return (images.images[:n].float() / 255 - mean) / std, images.labels[:n].long()
    return first


@pytest.fixture(scope="session")
def real_batch(cifar10_sample):
    """real_batch(n, split="test"): up to 200 train or 100 test images of the shipped sample (see batches_of)."""
    return batches_of(cifar10_sample)


@pytest.fixture(scope="session")
def real_batch_mini(cifar10_mini):
    """real_batch_mini(n, split="test"): as real_batch, from the larger data (5,000 train, 1,000 test images)."""
    return batches_of(cifar10_mini)


# The keys of a metrics.jsonl row that measure time: two runs that train alike differ in these only.
TIMING = {"epoch_time_s", "train_only_time_s", "images_per_s"}


def without_timing(rows: list[dict]) -> list[dict]:
    """Metrics rows without their clock readings, to compare two runs (say, a resumed one and a whole one)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


class StopAtStep:
    """Stands in for engine.StopSignals (monkeypatch it in): reports a SIGINT at the n-th step, as Ctrl-C would."""

    def __init__(self, n):
        self.n = n

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signum(self):
        self.n -= 1
        return signal.SIGINT if self.n == 0 else None


def slow_except(quick: set[int], cases: list) -> list:
    """Cases for pytest.mark.parametrize with all but those at the `quick` indices marked slow.

    For tests that start the CLI once per case: each start imports torch, ~4 s on 2 cores. The quick run
    (-m "not slow") keeps a representative few; the full suite runs every case."""
    def slow(case):
        return pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
    return [case if i in quick else slow(case) for i, case in enumerate(cases)]


def write_cifar_batch(path: Path, n: int, num_classes: int = 10, label_key: str = "labels",
                      py2_bytes_keys: bool = True, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A CIFAR batch as the official files store it (protocol 2, byte-string keys by default)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(i % num_classes) for i in range(n)]
    key = (lambda s: s.encode()) if py2_bytes_keys else (lambda s: s)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({key("data"): data, key(label_key): labels, key("batch_label"): key("synthetic")}, f, protocol=2)
    return data, labels


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", per_batch, seed=i)
    write_cifar_batch(folder / "test_batch", test, seed=99)
    with open(folder / "batches.meta", "wb") as f:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f, protocol=2)
    return folder


def write_cifar100(root: Path, train: int = 200, test: int = 100) -> Path:
    folder = root / "cifar-100-python"
    write_cifar_batch(folder / "train", train, 100, "fine_labels", seed=1)
    write_cifar_batch(folder / "test", test, 100, "fine_labels", seed=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}, f, protocol=2)
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str = "MNIST/raw", n_train: int = 60, n_test: int = 30,
                gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {f"{prefix}-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 f"{prefix}-labels-idx1-ubyte": np.arange(n, dtype=np.uint8) % 10}
        for name, arr in files.items():
            raw = idx_bytes(arr)
            if gz:
                (out / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (out / name).write_bytes(raw)
    return out


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m cifarlab ARGS` in a subprocess (real exit codes, real stderr)."""
    return subprocess.run([sys.executable, "-m", "cifarlab", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


# Injected into a report page: after loading, it lists its images, the broken ones, its sections (h2) and
# every script or console error into a <pre id="__check"> that --dump-dom prints.
CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(e.message || 'failed to load ' + (e.target.src || '')), true);
const _error = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); _error(...a); };
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const result = {images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
                  sections: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
                  errors: window.__errors};
  const pre = document.createElement('pre'); pre.id = '__check'; pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    return path


def headless(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def render_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Open a self-contained report page in headless Chromium (skipped where it is absent); what it rendered:
    {"images", "broken", "sections", "errors"}."""
    import json
    import re
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html   # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + CHECK, 1))
    dom = headless("--dump-dom", probe.as_uri())
    return json.loads(re.search(r'<pre id="__check">(.*?)</pre>', dom.stdout).group(1))
