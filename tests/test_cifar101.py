"""CIFAR-10.1: the official-layout reader on files written from real CIFAR-10 test images, the download against a
loopback HTTP server, the refusals, and `evaluate --dataset cifar10.1`'s drop and interval."""

import hashlib
import math
import shutil

import numpy as np
import pytest
from conftest import run_cli
from test_download import served  # noqa: F401  (the loopback HTTP server fixture)

import cifarlab
from cifarlab.data import cifar101
from cifarlab.errors import DataError, UsageError


def write_release(folder, images_nchw, labels, label_dtype=np.int64):
    """The two files exactly as the release lays them out: uint8 N x 32 x 32 x 3 (HWC) and N integer labels."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / cifar101.DATA_FILE, images_nchw.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    np.save(folder / cifar101.LABELS_FILE, labels.numpy().astype(label_dtype))
    return folder


@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8])
def test_reader_returns_the_real_test_images_written_in_the_official_layout(cifar10_sample, tmp_path, label_dtype):
    test = cifar10_sample.test
    folder = write_release(tmp_path / "cifar10.1", test.images, test.labels, label_dtype)
    assert np.load(folder / cifar101.DATA_FILE).shape == (100, 32, 32, 3)
    split = cifar101.load_cifar101(tmp_path, download_missing=False)
    assert split.images.shape == (100, 3, 32, 32) and split.images.dtype == test.images.dtype
    assert (split.images == test.images).all() and (split.labels == test.labels).all()


def test_reader_refuses_channels_first_images_naming_the_file(cifar10_sample, tmp_path):
    folder = write_release(tmp_path / "cifar10.1", cifar10_sample.test.images, cifar10_sample.test.labels)
    np.save(folder / cifar101.DATA_FILE, cifar10_sample.test.images.numpy())      # N x 3 x 32 x 32: not the layout
    with pytest.raises(DataError, match=r"cifar10.1_v6_data.npy: expected uint8 N x 32 x 32 x 3 images, got uint8 "
                                        r"100x3x32x32"):
        cifar101.load_cifar101(tmp_path, download_missing=False)


def test_missing_files_offline_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as err:
        cifar101.load_cifar101(tmp_path, download_missing=False)
    message = str(err.value)
    assert str(tmp_path / "cifar10.1") in message and cifar101.LABELS_FILE in message
    assert "modestyachts/CIFAR-10.1" in message and "\n" not in message


def _serve_release(www, cifar10_sample):
    write_release(www, cifar10_sample.test.images[:40], cifar10_sample.test.labels[:40])
    return {name: hashlib.md5((www / name).read_bytes()).hexdigest() for name in cifar101.MD5}


def test_download_fetches_both_files_and_checks_their_md5(served, cifar10_sample, tmp_path, monkeypatch):  # noqa: F811
    www, base = served
    monkeypatch.setattr(cifar101, "BASE_URL", base + "/")
    monkeypatch.setattr(cifar101, "MD5", _serve_release(www, cifar10_sample))
    (tmp_path / "data").mkdir()
    split = cifar101.load_cifar101(tmp_path / "data")
    assert len(split) == 40 and (split.images == cifar10_sample.test.images[:40]).all()
    assert sorted(p.name for p in (tmp_path / "data" / "cifar10.1").iterdir()) == sorted(cifar101.MD5)


def test_download_with_a_wrong_md5_leaves_no_file(served, cifar10_sample, tmp_path, monkeypatch):  # noqa: F811
    www, base = served
    md5 = _serve_release(www, cifar10_sample)
    monkeypatch.setattr(cifar101, "BASE_URL", base + "/")
    monkeypatch.setattr(cifar101, "MD5", {**md5, cifar101.DATA_FILE: "0" * 32})
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot download .*cifar10.1_v6_data.npy .*md5"):
        cifar101.load_cifar101(tmp_path / "data")
    assert list((tmp_path / "data" / "cifar10.1").iterdir()) == []


def test_unreachable_server_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar101, "BASE_URL", "http://127.0.0.1:9/")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as err:
        cifar101.load_cifar101(tmp_path / "data")
    message = str(err.value)
    assert message.startswith("cannot download http://127.0.0.1:9/cifar10.1_v6_data.npy")
    assert f"in {tmp_path / 'data' / 'cifar10.1'}" in message and "\n" not in message
    assert list((tmp_path / "data" / "cifar10.1").iterdir()) == []


def test_download_asks_for_base_url_plus_each_missing_file_only(cifar10_sample, tmp_path, monkeypatch):
    """What the download requests, with the real BASE_URL: the missing file alone, at BASE_URL + its name."""
    import torchvision.datasets.utils as tv

    release = write_release(tmp_path / "release", cifar10_sample.test.images[:5], cifar10_sample.test.labels[:5])
    folder = tmp_path / "data" / "cifar10.1"
    folder.mkdir(parents=True)
    shutil.copy(release / cifar101.LABELS_FILE, folder)           # the labels are there already
    asked = []

    def fake_download(url, root, filename):
        asked.append(url)
        shutil.copy(release / url.rsplit("/", 1)[1], f"{root}/{filename}")
    monkeypatch.setattr(tv, "download_url", fake_download)
    monkeypatch.setattr(cifar101, "MD5", {name: hashlib.md5((release / name).read_bytes()).hexdigest()
                                          for name in cifar101.MD5})
    split = cifar101.load_cifar101(tmp_path / "data")
    assert asked == [cifar101.BASE_URL + cifar101.DATA_FILE] and len(split) == 5
    assert asked[0].startswith("https://github.com/modestyachts/CIFAR-10.1/") and asked[0].endswith("_v6_data.npy")


def test_reader_refuses_empty_files_naming_the_file(cifar10_sample, tmp_path):
    test = cifar10_sample.test
    folder = write_release(tmp_path / "cifar10.1", test.images[:0], test.labels[:0])
    with pytest.raises(UsageError, match=r"cifar10.1_v6_data.npy: holds no images \(the release holds 2,000\)") as err:
        cifar101.load_cifar101(tmp_path, download_missing=False)
    assert str(folder / cifar101.DATA_FILE) in str(err.value) and "\n" not in str(err.value)


def test_training_on_cifar101_is_refused_in_one_line():
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10.1", "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cifarlab: error: cifar10.1 is a test set only: train on cifar10, then measure "
                                     "the run on it with `cifarlab evaluate RUN --dataset cifar10.1`")


@pytest.fixture(scope="module")
def sample_run(cifar_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar101") / "run"
    return cifarlab.train("basic-cnn", "cifar10", recipe="article-basic-cnn", data_dir=str(cifar_sample), epochs=2,
                          quiet=True, out=str(out))


def test_evaluate_on_cifar101_shows_the_drop_with_its_interval(sample_run, cifar_sample, cifar10_sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cifar_sample / "cifar-10-batches-py", data / "cifar-10-batches-py")
    # CIFAR-10.1 here: the last 60 real test images, so the two accuracies differ only by which images they hold
    test = cifar10_sample.test
    write_release(data / "cifar10.1", test.images[40:], test.labels[40:])
    result = run_cli("evaluate", str(sample_run.path), "--dataset", "cifar10.1", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    shift = __import__("json").loads(result.stdout)
    plain = sample_run.evaluate(data_dir=str(data))
    logits = np.load(sample_run.path / "evaluation-test" / "logits.npy")
    right = logits.argmax(1) == test.labels.numpy()
    assert shift["cifar10"]["accuracy"] == pytest.approx(plain["accuracy"])
    assert shift["cifar10.1"]["images"] == 60
    assert shift["cifar10.1"]["accuracy"] == pytest.approx(100 * right[40:].mean())
    p, q = right.mean(), right[40:].mean()
    half = 196 * math.sqrt(p * (1 - p) / 100 + q * (1 - q) / 60)
    assert shift["drop"] == pytest.approx(100 * (p - q))
    assert shift["drop_interval"] == pytest.approx([100 * (p - q) - half, 100 * (p - q) + half])
    text = run_cli("evaluate", str(sample_run.path), "--dataset", "cifar10.1", "--data-dir", str(data)).stdout
    assert f"drop: {100 * (p - q):+.2f} points, 95% CI [{100 * (p - q) - half:+.2f}" in text
    assert "about +-2 points" in text and "Recht et al." in text


def test_evaluate_on_cifar101_refuses_a_cifar100_run(cifar_sample, tmp_path):
    run = cifarlab.train("basic-cnn", "cifar100", data_dir=str(cifar_sample), epochs=1, quiet=True,
                         out=str(tmp_path / "c100"), limit_train=64)
    result = run_cli("evaluate", str(run.path), "--dataset", "cifar10.1")
    assert result.returncode == 2
    assert "tests CIFAR-10 models; this run was trained on cifar100" in result.stderr
