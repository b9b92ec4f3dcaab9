"""Data loaders on the real files: shapes, labels, normalisation, checksums, look-up, unpickler."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pyweightstat import data as pdata
from pyweightstat.data import (
    ChecksumError,
    DatasetNotFoundError,
    NonCanonicalDataWarning,
    load_dataset,
    restricted_loads,
)
from pyweightstat.data import files as pfiles
from pyweightstat.data import loaders as ploaders

DATA = os.environ.get("PYWEIGHTSTAT_DATA")
needs_data = pytest.mark.skipif(
    not DATA or not Path(DATA, "mnist").is_dir(),
    reason="set PYWEIGHTSTAT_DATA to the shared data directory",
)
IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _read_idx(path: Path) -> np.ndarray:
    """Independent IDX reader: big-endian dims after the 4-byte magic, then the bytes."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env data dir, an empty user cache, no downloads."""
    monkeypatch.delenv("PYWEIGHTSTAT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PYWEIGHTSTAT_OFFLINE", "1")
    return tmp_path


def _copy_mnist(dst: Path) -> Path:
    d = dst / "mnist"
    shutil.copytree(Path(DATA, "mnist"), d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_shapes_labels_and_normalisation(name):
    ds = load_dataset(name)
    assert ds.name == name and ds.canonical and ds.num_classes == 10
    assert ds.in_shape == (1, 28, 28)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_x.device.type == "cpu"
    for y in (ds.train_y, ds.test_y):
        assert int(y.min()) == 0 and int(y.max()) == 9
    folder = Path(ds.source)
    raw_train = _read_idx(folder / IDX[0]).astype(np.float64) / 255.0
    raw_labels = _read_idx(folder / IDX[3])
    mean, std = raw_train.mean(), raw_train.std()
    assert ds.mean[0] == pytest.approx(mean, rel=1e-12)
    assert ds.std[0] == pytest.approx(std, rel=1e-12)
    x = ds.train_x.double().numpy()
    assert abs(x.mean()) < 1e-5 and x.std() == pytest.approx(1.0, abs=1e-5)
    raw_test = _read_idx(folder / IDX[2]).astype(np.float64) / 255.0
    np.testing.assert_allclose(
        ds.test_x[:50, 0].double().numpy(), (raw_test[:50] - mean) / std, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(ds.test_y.numpy(), raw_labels)


@needs_data
def test_cifar10_reconstruction_warns_once_and_is_not_canonical():
    ploaders._WARNED.discard("cifar10")
    with pytest.warns(NonCanonicalDataWarning, match="not the canonical"):
        ds = load_dataset("cifar10", train_size=2000, test_size=500)
    assert not ds.canonical and ds.in_shape == (3, 32, 32)
    assert ds.train_x.shape == (2000, 3, 32, 32) and ds.test_x.shape == (500, 3, 32, 32)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert len(ds.mean) == 3 and all(0.3 < m < 0.6 for m in ds.mean)
    assert int(ds.train_y.min()) == 0 and int(ds.train_y.max()) == 9
    # the second load in the same process does not warn again (filterwarnings=error would fail)
    again = load_dataset("cifar10", train_size=10, test_size=10)
    assert not again.canonical


@needs_data
def test_subsets_are_deterministic_subsets():
    full = load_dataset("mnist")
    a = load_dataset("mnist", train_size=300, test_size=200, seed=3)
    b = load_dataset("mnist", train_size=300, test_size=200, seed=3)
    c = load_dataset("mnist", train_size=300, test_size=200, seed=4)
    assert a.train_x.shape == (300, 1, 28, 28) and a.test_y.shape == (200,)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    rows = {full.train_x[i].numpy().tobytes(): int(full.train_y[i]) for i in range(60000)}
    for x, y in zip(a.train_x, a.train_y, strict=True):
        assert rows[x.numpy().tobytes()] == int(y)
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("mnist", train_size=0)
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("mnist", test_size=10001)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("svhn")


@needs_data
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_copy_is_rejected_naming_the_file(isolated, damage):
    d = _copy_mnist(isolated / "root")
    victim = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    expected = "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", data_dir=isolated / "root")
    msg = str(info.value)
    assert str(victim) in msg and expected in msg and actual in msg


def test_missing_dataset_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("PYWEIGHTSTAT_DATA", str(isolated / "env-root"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=isolated / "explicit")
    msg = str(info.value)
    for place in (isolated / "explicit", isolated / "env-root", isolated / "xdg" / "pyweightstat"):
        assert str(place / "fashion-mnist") in msg
    assert "download disabled" in msg


@needs_data
def test_incomplete_directory_is_reported(isolated):
    d = _copy_mnist(isolated / "root")
    (d / IDX[1]).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing train-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", data_dir=isolated / "root")


@needs_data
def test_sha256sums_declares_a_non_canonical_copy(isolated):
    d = _copy_mnist(isolated / "root")
    lines = [f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}" for n in IDX]
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    pdata.clear_cache()
    with pytest.warns(NonCanonicalDataWarning) as record:
        ds = load_dataset("mnist", data_dir=isolated / "root", train_size=100, test_size=100)
    assert len(record) == 1 and not ds.canonical and ds.source == str(d)
    load_dataset("mnist", data_dir=isolated / "root", train_size=10, test_size=10)  # no warning
    # a listed checksum that does not match is a checksum error
    (d / "SHA256SUMS").write_text("\n".join([*lines[:3], "0" * 64 + "  " + IDX[3]]) + "\n")
    with pytest.raises(ChecksumError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", data_dir=isolated / "root")
    # a file missing from the list is refused
    (d / "SHA256SUMS").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ChecksumError, match="lists no checksum"):
        load_dataset("mnist", data_dir=isolated / "root")


@needs_data
def test_download_from_a_mirror_into_the_cache(isolated, monkeypatch):
    spec = pdata.DATASETS["mnist"]
    bad = isolated / "bad-mirror"
    bad.mkdir()
    for n in IDX:
        (bad / n).write_bytes(b"not the file")
    mirrors = (bad.as_uri() + "/", Path(DATA, "mnist").as_uri() + "/")
    monkeypatch.setitem(pdata.DATASETS, "mnist", dataclasses.replace(spec, mirrors=mirrors))
    ds = load_dataset("mnist", download=True, progress=False, train_size=50, test_size=50)
    cached = isolated / "xdg" / "pyweightstat" / "mnist"
    assert ds.source == str(cached) and ds.canonical
    for n in IDX:
        assert (cached / n).read_bytes() == Path(DATA, "mnist", n).read_bytes()
    assert not list(cached.glob("*.part"))


def test_failed_download_is_listed(isolated, monkeypatch):
    spec = pdata.DATASETS["fashion-mnist"]
    nowhere = (isolated / "nowhere").as_uri() + "/"
    monkeypatch.setitem(
        pdata.DATASETS, "fashion-mnist", dataclasses.replace(spec, mirrors=(nowhere,))
    )
    with pytest.raises(DatasetNotFoundError, match="download from the official mirrors failed"):
        load_dataset("fashion-mnist", download=True, progress=False)


def test_archive_extraction_takes_only_known_files(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in [
            ("cifar-10-batches-py/data_batch_1", b"one"),
            ("cifar-10-batches-py/../../escape", b"evil"),
            ("cifar-10-batches-py/readme.html", b"x"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    target = tmp_path / "out" / "cifar-10-batches-py"
    pfiles._extract_archive(archive, "cifar-10-batches-py/", {"data_batch_1"}, target)
    assert sorted(p.name for p in target.iterdir()) == ["data_batch_1"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out" / "escape").exists()
    with pytest.raises(pdata.DataFormatError, match="test_batch"):
        pfiles._extract_archive(archive, "cifar-10-batches-py/", {"test_batch"}, target)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        restricted_loads(payload)
    payload = pickle.dumps(eval, protocol=4)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        restricted_loads(payload)
    assert not marker.exists()
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    back = restricted_loads(pickle.dumps({b"data": arr, b"labels": [1, 2, 3]}, protocol=4))
    np.testing.assert_array_equal(back[b"data"], arr)
    assert back[b"labels"] == [1, 2, 3]


@needs_data
def test_malicious_cifar_batch_is_refused_after_its_checksum(isolated):
    d = isolated / "root" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    marker = isolated / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=4)
    names = [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    for n in names:
        (d / n).write_bytes(evil)
    shutil.copyfile(
        Path(DATA, "cifar-10", "cifar-10-batches-py", "batches.meta"), d / "batches.meta"
    )
    sums = [
        f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}" for n in [*names, "batches.meta"]
    ]
    (d / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=isolated / "root")
    assert not marker.exists()


@needs_data
def test_data_on_the_requested_device():
    ds = load_dataset("mnist", train_size=64, test_size=64, device="cpu")
    assert ds.test_x.device == torch.device("cpu") and ds.test_y.device == torch.device("cpu")
    assert "mnist" in repr(ds)


@needs_data
def test_cifar_without_sums_is_checked_against_canonical_md5(isolated):
    """The shared reconstruction, seen without its SHA256SUMS, fails the canonical MD5."""
    src = Path(DATA, "cifar-10", "cifar-10-batches-py")
    d = isolated / "root" / "cifar-10-batches-py"  # the accepted short layout
    d.mkdir(parents=True)
    for p in src.iterdir():
        if p.name != "SHA256SUMS":
            (d / p.name).symlink_to(p)
    with pytest.raises(ChecksumError) as info:
        load_dataset("cifar10", data_dir=isolated / "root")
    msg = str(info.value)
    assert "data_batch_1" in msg and "md5" in msg
    assert "c99cafc152244af753f735de768cd75f" in msg  # canonical, published by torchvision
    assert "0a5935cb8bf154738b130d259b2e3177" in msg  # the reconstruction's actual md5
