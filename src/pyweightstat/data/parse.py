"""Parsers for verified data-file bytes: IDX (MNIST, Fashion-MNIST) and CIFAR-10 pickles.

CIFAR-10's python batches are pickles. They are only ever parsed after their checksum has been
verified, and then with :class:`RestrictedUnpickler`, which resolves only the few globals that a
pickled NumPy array needs and refuses everything else.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "parse_cifar_batch", "parse_idx_gz", "restricted_loads"]

try:  # NumPy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

# Everything a pickled ndarray refers to. Pickles written by NumPy 1 name
# ``numpy.core.multiarray``, NumPy 2 ``numpy._core.multiarray``: both map to the same function
# (resolved here, so that ``numpy.core``'s deprecation shim is never touched).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, numbers, strings and NumPy arrays only.

    Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`pickle.UnpicklingError` instead of being imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the allow-listed NumPy globals.

        Parameters
        ----------
        module, name : str
            The global the pickle asks for.

        Returns
        -------
        object
            The allow-listed object.

        Raises
        ------
        pickle.UnpicklingError
            For every global outside the allow-list.
        """
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: a CIFAR-10 batch needs only "
                "NumPy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (the format has none)."""
        raise pickle.UnpicklingError("refusing persistent id in a CIFAR-10 batch")


def restricted_loads(raw: bytes) -> Any:
    """Unpickle ``raw`` with :class:`RestrictedUnpickler` (``encoding="bytes"``).

    Parameters
    ----------
    raw : bytes
        A pickle stream.

    Returns
    -------
    object
    """
    return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()


def parse_idx_gz(raw: bytes, where: str) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes.

    Parameters
    ----------
    raw : bytes
        The ``.gz`` file's bytes.
    where : str
        The file's path, for error messages.

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape stored in the header (read-only view of the decompressed bytes).

    Raises
    ------
    ValueError
        If the header or the length is not that of an IDX uint8 file.
    """
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{where}: not a valid gzip stream: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{where}: not an IDX file of unsigned bytes (magic {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{where}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(
            f"{where}: IDX body has {len(data) - header} bytes, header says shape {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 python batch.

    Parameters
    ----------
    raw : bytes
        The verified pickle bytes.
    where : str
        The file's path, for error messages.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 3, 32, 32)``.
    labels : numpy.ndarray
        int64, shape ``(N,)``.

    Raises
    ------
    ValueError
        If the batch does not have the CIFAR-10 layout.
    """
    try:
        obj = restricted_loads(raw)
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{where}: {exc}") from exc
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise ValueError(f"{where}: not a CIFAR-10 batch (expected a dict with data and labels)")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{where}: 'data' is not a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: 'data' rows have {data.shape[1]} values, expected 3072")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {labels.shape[0]} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels


def parse_cifar_meta(raw: bytes, where: str) -> tuple[str, ...]:
    """Return the class names stored in CIFAR-10's ``batches.meta``.

    Parameters
    ----------
    raw : bytes
        The verified pickle bytes.
    where : str
        The file's path, for error messages.

    Returns
    -------
    tuple of str
    """
    obj = restricted_loads(raw)
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list):
        raise ValueError(f"{where}: no label_names list")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
