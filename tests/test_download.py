"""Downloads run through torchvision's utilities against a loopback HTTP server (no internet needed)."""

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from cifarlab.data import sources
from cifarlab.errors import DataError

from conftest import write_cifar10


@pytest.fixture
def served(tmp_path):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _cifar_archive(tmp_path, www):
    write_cifar10(tmp_path / "src", per_batch=10, test=10)
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _with_archive(monkeypatch, url, md5):
    info = dataclasses.replace(sources.DATASETS["cifar10"], archives=((url, md5),))
    monkeypatch.setitem(sources.DATASETS, "cifar10", info)


def test_missing_files_are_downloaded_checked_and_extracted(tmp_path, served, monkeypatch):
    www, base = served
    _, md5 = _cifar_archive(tmp_path, www)
    _with_archive(monkeypatch, f"{base}/cifar-10-python.tar.gz", md5)
    (tmp_path / "data").mkdir()
    ds = sources.load_dataset("cifar10", tmp_path / "data")
    assert len(ds.train) == 50 and len(ds.test) == 10
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_archive_with_wrong_md5_is_not_extracted(tmp_path, served, monkeypatch):
    www, base = served
    _cifar_archive(tmp_path, www)
    _with_archive(monkeypatch, f"{base}/cifar-10-python.tar.gz", "0" * 32)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot download"):
        sources.load_dataset("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()


def test_unreachable_server_error_names_files_and_folder(tmp_path, monkeypatch):
    _with_archive(monkeypatch, "http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as err:
        sources.load_dataset("cifar10", tmp_path / "data")
    message = str(err.value)
    assert "data_batch_1" in message and str(tmp_path / "data" / "cifar-10-batches-py") in message


def test_archive_members_escaping_the_target_are_refused(tmp_path, served, monkeypatch):
    www, base = served
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"escaped"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    _with_archive(monkeypatch, f"{base}/cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest())
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cannot extract"):
        sources.load_dataset("cifar10", tmp_path / "data")
    assert not (tmp_path / "escaped.txt").exists()
