import gzip
import pickle

import numpy as np
import pytest
import torch

from cifarlab.data.sources import load_dataset
from cifarlab.data.formats import read_cifar_batch, read_idx
from cifarlab.errors import DataError

from conftest import idx_bytes, run_cli, slow_except, write_cifar10, write_cifar100, write_cifar_batch, write_mnist


@pytest.mark.parametrize("py2_bytes_keys", [True, False])
def test_cifar_batch_reads_channel_planes_in_order(tmp_path, py2_bytes_keys):
    data, labels = write_cifar_batch(tmp_path / "b", 7, py2_bytes_keys=py2_bytes_keys)
    split = read_cifar_batch(tmp_path / "b", "labels", 10)
    assert split.images.dtype == torch.uint8 and split.images.shape == (7, 3, 32, 32)
    # The row is 1024 red, 1024 green, 1024 blue values, each plane row-major.
    assert split.images[3, 1, 2, 5].item() == data[3, 1024 + 2 * 32 + 5]
    assert split.labels.tolist() == labels


def test_cifar10_and_cifar100_layouts_load_whole(tmp_path):
    write_cifar10(tmp_path, per_batch=20, test=10)
    write_cifar100(tmp_path, train=200, test=100)
    c10 = load_dataset("cifar10", tmp_path, download_missing=False)
    assert len(c10.train) == 100 and len(c10.test) == 10 and c10.classes[9] == "truck"
    c100 = load_dataset("cifar100", tmp_path, download_missing=False)
    assert len(c100.train) == 200 and c100.train.labels.max().item() == 99 and c100.classes[5] == "class5"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_files_plain_or_gzipped(tmp_path, gz, name, folder):
    write_mnist(tmp_path, folder, n_train=60, n_test=30, gz=gz)
    ds = load_dataset(name, tmp_path, download_missing=False)
    assert ds.train.images.shape == (60, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.tolist() == [i % 10 for i in range(30)]


def test_idx_reader_checks_declared_size(tmp_path):
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "x").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="header declares"):
        read_idx(tmp_path / "x")
    (tmp_path / "y.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="y.gz"):
        read_idx(tmp_path / "y.gz")


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "b").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        read_cifar_batch(tmp_path / "b", "labels", 10)
    assert not marker.exists()


def _break(kind: str, folder):
    target = folder / "data_batch_3"
    broken_contents = {
        "shape": (np.zeros((20, 100), np.uint8), [0] * 20),
        "dtype": (np.zeros((20, 3072), np.float32), [0] * 20),
        "label-range": (np.zeros((20, 3072), np.uint8), [10] * 20),
        "label-count": (np.zeros((20, 3072), np.uint8), [0] * 19),
    }
    if kind == "missing":
        target.unlink()
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[:500])
    else:
        data, labels = broken_contents[kind]
        with open(target, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    return target


BAD = {"missing": "file not found", "empty": "empty", "truncated": "truncated", "shape": "shape",
       "dtype": "uint8", "label-range": "outside 0..9", "label-count": "19 labels for 20 images"}


@pytest.mark.parametrize("kind", slow_except({2}, list(BAD)))             # quick: truncated
def test_bad_dataset_file_is_one_line_exit_2_and_nothing_trained(tmp_path, kind):
    folder = write_cifar10(tmp_path / "data")
    target = _break(kind, folder)
    out = tmp_path / "run"
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                     "--no-download", "--epochs", "1", "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(target) in lines[0] and BAD[kind] in lines[0]
    assert not out.exists()


def test_bad_idx_labels_name_the_file(tmp_path):
    folder = write_mnist(tmp_path, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(30, 12, np.uint8))))
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "mnist", "--data-dir", str(tmp_path),
                     "--no-download", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "t10k-labels-idx1-ubyte.gz" in result.stderr and "outside 0..9" in result.stderr


def test_missing_files_without_download_say_where_to_put_them(tmp_path):
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar100", "--data-dir", str(tmp_path),
                     "--no-download")
    assert result.returncode == 2
    assert "--no-download" in result.stderr and str(tmp_path / "cifar-100-python") in result.stderr
    assert "train, test" in result.stderr
