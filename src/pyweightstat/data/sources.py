"""What each data set is made of: file names, canonical checksums, official mirrors.

The checksums are the canonical ones: SHA-256 of the eight MNIST / Fashion-MNIST IDX ``.gz``
files, and for CIFAR-10 the MD5 values that torchvision publishes (the canonical SHA-256 of the
original python batches are not available to us). A directory may instead declare a
non-canonical copy with a ``SHA256SUMS`` file (see :mod:`pyweightstat.data.files`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "ArchiveSpec", "DatasetSpec", "FileSpec", "dataset_spec"]


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set and its canonical checksum."""

    name: str
    algo: str  # "sha256" or "md5"
    digest: str


@dataclass(frozen=True)
class ArchiveSpec:
    """A downloadable archive that unpacks into the data set's directory."""

    url: str
    filename: str
    algo: str
    digest: str
    member_prefix: str  # directory inside the archive that holds the files


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the loader needs to find, verify and download one data set."""

    name: str
    subdirs: tuple[str, ...]  # candidate directories under a root; the first receives downloads
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]  # base URLs for per-file downloads (empty when ``archive`` is used)
    archive: ArchiveSpec | None
    in_shape: tuple[int, int, int]
    classes: tuple[str, ...]


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_MNIST_SHA256 = (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
)

_FASHION_SHA256 = (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
)

# Canonical MD5 of the original CIFAR-10 python batches (as published by torchvision).
_CIFAR10_MD5 = (
    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ("test_batch", "40351d587109b95175f43aff81a1287e"),
    ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
)

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR10_ARCHIVE = ArchiveSpec(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    algo="md5",
    digest="c58f30108f718f92721af3b95e74349a",
    member_prefix="cifar-10-batches-py/",
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        subdirs=("mnist",),
        files=tuple(
            FileSpec(n, "sha256", d) for n, d in zip(_IDX_NAMES, _MNIST_SHA256, strict=True)
        ),
        mirrors=MNIST_MIRRORS,
        archive=None,
        in_shape=(1, 28, 28),
        classes=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        subdirs=("fashion-mnist",),
        files=tuple(
            FileSpec(n, "sha256", d) for n, d in zip(_IDX_NAMES, _FASHION_SHA256, strict=True)
        ),
        mirrors=FASHION_MNIST_MIRRORS,
        archive=None,
        in_shape=(1, 28, 28),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        subdirs=("cifar-10/cifar-10-batches-py", "cifar-10-batches-py"),
        files=tuple(FileSpec(n, "md5", d) for n, d in _CIFAR10_MD5),
        mirrors=(),
        archive=CIFAR10_ARCHIVE,
        in_shape=(3, 32, 32),
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` of ``name``.

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.

    Returns
    -------
    DatasetSpec

    Raises
    ------
    ValueError
        If ``name`` is not a known data set.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]
