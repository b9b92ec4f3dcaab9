"""``load_dataset``: verified files -> normalised tensors on the training device.

Normalisation (decided here, recorded in ``Dataset.mean`` / ``Dataset.std``): per channel,
``x = (pixel / 255 - mean) / std`` with ``mean`` and ``std`` computed exactly (from the 256-bin
pixel histogram, in float64) over the **full training split** of the files actually loaded. It
does not depend on ``train_size``, and it adapts to a declared non-canonical copy (for example the
JPEG-degraded CIFAR-10 reconstruction) instead of trusting published constants.

Parsed arrays are cached per process (``functools.lru_cache``), so a study with many runs reads,
verifies and parses each file once.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import files as _files
from .files import DatasetNotFoundError
from .parse import parse_cifar_batch, parse_cifar_meta, parse_idx_gz
from .sources import DatasetSpec, dataset_spec

__all__ = ["Dataset", "NonCanonicalDataWarning", "clear_cache", "load_dataset"]


class NonCanonicalDataWarning(UserWarning):
    """The files loaded are a declared non-canonical copy (a ``SHA256SUMS`` was found)."""


_WARNED: set[str] = set()


@dataclass
class Dataset:
    """A data set as tensors ready for training.

    Attributes
    ----------
    train_x, test_x : torch.Tensor
        float32, shape ``(N, C, H, W)``, normalised per channel.
    train_y, test_y : torch.Tensor
        int64 labels in ``0 .. num_classes - 1``.
    num_classes : int
    in_shape : tuple of int
        ``(C, H, W)``.
    name : str
    canonical : bool
        False when a ``SHA256SUMS`` file declared a non-canonical copy.
    source : str
        The directory the files were read from.
    classes : tuple of str
        Class names.
    mean, std : tuple of float
        The per-channel normalisation applied (on the 0..1 pixel scale).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_shape: tuple[int, int, int]
    name: str
    canonical: bool
    source: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, device={self.train_x.device}, "
            f"canonical={self.canonical}, source={self.source!r})"
        )


@dataclass(frozen=True)
class _Arrays:
    train_x: np.ndarray  # uint8 (N, C, H, W)
    train_y: np.ndarray  # int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # 0..255 scale
    std: tuple[float, ...]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images, via a 256-bin histogram per channel."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def _parse(spec: DatasetSpec, loc: _files.Located) -> _Arrays:
    def verified(name: str) -> bytes:
        algo, digest = loc.expected[name]
        return _files.read_verified(loc.directory / name, algo, digest)

    def where(name: str) -> str:
        return str(loc.directory / name)

    if spec.name == "cifar10":
        classes = parse_cifar_meta(verified("batches.meta"), where("batches.meta"))
        parts = [
            parse_cifar_batch(verified(f"data_batch_{i}"), where(f"data_batch_{i}"))
            for i in range(1, 6)
        ]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = parse_cifar_batch(verified("test_batch"), where("test_batch"))
    else:
        classes = spec.classes
        arrays = {f.name: parse_idx_gz(verified(f.name), where(f.name)).copy() for f in spec.files}
        train_x = arrays["train-images-idx3-ubyte.gz"][:, None]
        train_y = arrays["train-labels-idx1-ubyte.gz"].astype(np.int64)
        test_x = arrays["t10k-images-idx3-ubyte.gz"][:, None]
        test_y = arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.shape[1:] != spec.in_shape or x.shape[0] != y.shape[0]:
            raise _files.DataFormatError(
                f"{loc.directory}: {split} images {x.shape} / labels {y.shape} do not match "
                f"{spec.name}'s shape {spec.in_shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= len(spec.classes)):
            raise _files.DataFormatError(f"{loc.directory}: {split} labels outside 0..9")
    mean, std = _channel_stats(train_x)
    return _Arrays(train_x, train_y, test_x, test_y, classes, mean, std)


def _stamp(loc: _files.Located) -> tuple[tuple[str, int, int], ...]:
    paths = [loc.directory / n for n in sorted(loc.expected)]
    sums = loc.directory / _files.SUMS_FILE
    if sums.is_file():
        paths.append(sums)
    return tuple((p.name, (s := p.stat()).st_size, s.st_mtime_ns) for p in paths)


@functools.lru_cache(maxsize=4)
def _cached_arrays(
    name: str,
    directory: str,
    expected: tuple[tuple[str, str, str], ...],
    canonical: bool,
    stamp: tuple[tuple[str, int, int], ...],
) -> _Arrays:
    loc = _files.Located(Path(directory), {n: (a, d) for n, a, d in expected}, canonical)
    return _parse(dataset_spec(name), loc)


def clear_cache() -> None:
    """Forget the parsed arrays cached in this process (and the once-per-process warnings)."""
    _cached_arrays.cache_clear()
    _WARNED.clear()


def _subset(n: int, size: int | None, seed: int, arg: str) -> np.ndarray | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{arg} must be an int or None, got {type(size).__name__}")
    if not 1 <= size <= n:
        raise ValueError(f"{arg} must be in 1..{n}, got {size}")
    if size == n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:size])


def _to_tensor(
    x: np.ndarray, idx: np.ndarray | None, mean: np.ndarray, std: np.ndarray, device: torch.device
) -> torch.Tensor:
    if idx is not None:
        x = x[idx]
    xf = x.astype(np.float32)
    xf -= mean.reshape(1, -1, 1, 1)
    xf /= std.reshape(1, -1, 1, 1)
    return torch.from_numpy(xf).to(device)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    download: bool | None = None,
    progress: bool = True,
) -> Dataset:
    """Load a data set as normalised tensors, verifying every file before parsing it.

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    data_dir : path-like, optional
        Root directory searched first (then ``$PYWEIGHTSTAT_DATA``, then the user cache).
    train_size, test_size : int, optional
        Keep a deterministic random subset of this many samples (chosen with ``seed``; the
        original order is kept). ``None`` keeps the whole split.
    device : str or torch.device
        Where the tensors are put.
    seed : int
        Seed of the subset selection.
    download : bool, optional
        Whether to download into the user cache when the data set is found nowhere. Default:
        yes, unless the environment variable ``PYWEIGHTSTAT_OFFLINE`` is set to a non-empty
        value other than ``0``.
    progress : bool
        Show a progress bar while downloading.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown ``name`` or bad subset sizes.
    DatasetNotFoundError
        The data set was found nowhere (and could not be downloaded); lists every place looked.
    ChecksumError
        A file is corrupted or truncated; names the file and both checksums.

    Warns
    -----
    NonCanonicalDataWarning
        Once per process and data set, when the files are a declared non-canonical copy.
    """
    spec = dataset_spec(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    dev = torch.device(device)
    roots = _files.candidate_roots(data_dir)
    loc, looked = _files.locate(spec, roots)
    if loc is None:
        if download is None:
            download = os.environ.get("PYWEIGHTSTAT_OFFLINE", "") in ("", "0")
        if download:
            try:
                _files.download(spec, _files.cache_dir(), progress=progress)
            except (OSError, _files.ChecksumError) as exc:
                looked.append(f"download from the official mirrors failed: {exc}")
            else:
                loc, more = _files.locate(spec, [("cache", _files.cache_dir())])
                looked += more
        else:
            looked.append("download disabled (download=False or PYWEIGHTSTAT_OFFLINE set)")
    if loc is None:
        raise DatasetNotFoundError(
            f"data set {name!r} not found. Looked in:\n  - "
            + "\n  - ".join(looked)
            + "\nPass data_dir=..., set PYWEIGHTSTAT_DATA, or allow the download."
        )
    expected = tuple((n, a, d) for n, (a, d) in sorted(loc.expected.items()))
    arrays = _cached_arrays(name, str(loc.directory), expected, loc.canonical, _stamp(loc))
    if not loc.canonical and name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"{name}: {loc.directory} is not the canonical copy (a SHA256SUMS file declares it); "
            "files were verified against that list. Accuracies are not comparable with "
            "published numbers.",
            NonCanonicalDataWarning,
            stacklevel=2,
        )
    mean = np.asarray(arrays.mean, dtype=np.float32)
    std = np.asarray(arrays.std, dtype=np.float32)
    train_idx = _subset(len(arrays.train_y), train_size, seed, "train_size")
    test_idx = _subset(len(arrays.test_y), test_size, seed, "test_size")
    train_y = arrays.train_y if train_idx is None else arrays.train_y[train_idx]
    test_y = arrays.test_y if test_idx is None else arrays.test_y[test_idx]
    return Dataset(
        train_x=_to_tensor(arrays.train_x, train_idx, mean, std, dev),
        train_y=torch.from_numpy(np.array(train_y, dtype=np.int64)).to(dev),
        test_x=_to_tensor(arrays.test_x, test_idx, mean, std, dev),
        test_y=torch.from_numpy(np.array(test_y, dtype=np.int64)).to(dev),
        num_classes=len(spec.classes),
        in_shape=spec.in_shape,
        name=name,
        canonical=loc.canonical,
        source=str(loc.directory),
        classes=arrays.classes,
        mean=tuple(m / 255.0 for m in arrays.mean),
        std=tuple(s / 255.0 for s in arrays.std),
    )
