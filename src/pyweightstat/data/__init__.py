"""Data sets: MNIST, Fashion-MNIST and CIFAR-10 as verified, normalised tensors.

See :func:`load_dataset`. Files are found in ``data_dir``, ``$PYWEIGHTSTAT_DATA``, the user cache
(``~/.cache/pyweightstat``), or downloaded from the official mirrors, and verified by checksum
before they are parsed.
"""

from .files import ChecksumError, DataFormatError, DatasetNotFoundError, cache_dir
from .loaders import Dataset, NonCanonicalDataWarning, clear_cache, load_dataset
from .parse import RestrictedUnpickler, restricted_loads
from .sources import DATASETS

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DataFormatError",
    "Dataset",
    "DatasetNotFoundError",
    "NonCanonicalDataWarning",
    "RestrictedUnpickler",
    "cache_dir",
    "clear_cache",
    "load_dataset",
    "restricted_loads",
]
