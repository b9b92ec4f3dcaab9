"""Turning user inputs into DLPack capsules for the compiled core, with clear errors.

The C++ core assumes valid input; everything a user can get wrong is checked here first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ACCEPTED_DTYPES = "float16, bfloat16, float32 and float64"
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13


@dataclass
class Prepared:
    """One validated input: the object to export, its device and its number of elements."""

    obj: Any
    name: str
    device: str  # "cpu" or "cuda"
    device_id: int
    numel: int


def _torch():
    import sys

    return sys.modules.get("torch")


def _torch_floats(torch: Any) -> tuple[Any, ...]:
    """The torch dtypes the engine reads."""
    return (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_numpy(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} has dtype {x.dtype}; accepted dtypes are {ACCEPTED_DTYPES}")
    if not x.dtype.isnative:
        # DLPack has no byte order: convert non-native (e.g. big-endian) arrays once.
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def prepare(x: Any, name: str) -> Prepared:
    """Validate one input and return what the core needs to read it.

    Parameters
    ----------
    x : array-like
        A ``torch.Tensor``, ``numpy.ndarray``, any object implementing ``__dlpack__``, or a
        list/tuple of floats.
    name : str
        How to call the input in error messages.
    """
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        if x.dtype not in _torch_floats(torch):
            raise TypeError(f"{name} has dtype {x.dtype}; accepted dtypes are {ACCEPTED_DTYPES}")
        if x.requires_grad:
            x = x.detach()
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        dev = x.device
        if dev.type == "cpu":
            return Prepared(x, name, "cpu", 0, x.numel())
        if dev.type == "cuda":
            return Prepared(x, name, "cuda", dev.index or 0, x.numel())
        raise ValueError(
            f"{name} is on device {dev}; accepted devices are the CPU and NVIDIA CUDA GPUs"
        )
    if isinstance(x, np.ndarray):
        x = _check_numpy(x, name)
        return Prepared(x, name, "cpu", 0, int(x.size))
    if isinstance(x, (np.generic, float)):
        return prepare(np.asarray(x), name)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        dev_type, dev_id = x.__dlpack_device__()
        dev_type = int(dev_type)
        if dev_type in (_DL_CPU, _DL_CUDA_HOST):
            device = "cpu"
        elif dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
            device = "cuda"
        else:
            raise ValueError(
                f"{name} lives on DLPack device type {dev_type}; accepted devices are the CPU "
                "and NVIDIA CUDA GPUs"
            )
        size = getattr(x, "size", None)
        numel = int(np.prod(x.shape)) if hasattr(x, "shape") else -1
        if isinstance(size, int):
            numel = size
        return Prepared(x, name, device, int(dev_id), numel)
    if isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype.kind in "iu" and arr.size == 0:
            arr = arr.astype(np.float64)
        return prepare(arr, name)
    raise TypeError(
        f"{name} must be an array that supports DLPack (torch.Tensor, numpy.ndarray, "
        f"cupy.ndarray, ...) with dtype {ACCEPTED_DTYPES}; got {type(x).__name__}"
    )


def capsule(p: Prepared, stream: int | None = None) -> Any:
    """Export a prepared CPU input as a DLPack capsule (versioned when the producer can)."""
    x = p.obj
    if p.device == "cuda":
        return x.__dlpack__(stream=stream)
    try:
        return x.__dlpack__(max_version=(1, 0))
    except TypeError:
        return x.__dlpack__()
    except BufferError:
        # e.g. read-only NumPy arrays on NumPy versions without versioned DLPack
        if isinstance(x, np.ndarray):
            return np.array(x, copy=True).__dlpack__()
        raise


def cpu_tensor_capsules(tensors: Sequence[Any]) -> list[Any] | None:
    """DLPack capsules of CPU float ``torch.Tensor`` objects that :func:`prepare` would pass
    unchanged (no gradient, conjugate or negative bit), exported without its per-input work:
    about 1 us each instead of 10 (``prepare``, ``capsule`` and ``Tensor.__dlpack__``).  None if
    one of them is anything else, or if there are none: :func:`prepare` then says what is wrong.
    Used by the CPU weight tracker, which reads the same parameters at every record."""
    torch = _torch()
    if torch is None:
        return None
    from torch.utils.dlpack import to_dlpack

    floats = _torch_floats(torch)
    caps = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_cpu or t.dtype not in floats:
            return None
        if t.requires_grad or t.is_neg() or t.is_conj():  # prepare would convert these
            return None
        caps.append(to_dlpack(t))
    return caps or None


def prepare_many(xs: Iterable[Any] | Any, name: str = "xs") -> list[Prepared]:
    """Validate a list (or any iterable, e.g. ``model.parameters()``) of inputs."""
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
        raise TypeError(f"{name} must be an iterable of arrays; got {type(xs).__name__}")
    items = list(xs)
    return [prepare(x, f"{name}[{i}]") for i, x in enumerate(items)]


def check_bins(bins: Any) -> int:
    """Validate a number of bins (an integer >= 1)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise TypeError(f"bins must be an integer >= 1; got {bins!r}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1; got {bins}")
    return int(bins)


def check_range(range_: Any) -> tuple[float, float] | None:
    """Validate a histogram range ``(lo, hi)``: finite and not reversed."""
    if range_ is None:
        return None
    if not isinstance(range_, Sequence) and not isinstance(range_, np.ndarray):
        raise TypeError(f"range must be a pair (lo, hi) of finite numbers; got {range_!r}")
    if len(range_) != 2:
        raise ValueError(f"range must be a pair (lo, hi); got {len(range_)} values")
    lo, hi = float(range_[0]), float(range_[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range must be finite; got ({lo}, {hi})")
    if lo > hi:
        raise ValueError(f"range is reversed: lo={lo} > hi={hi}; pass (lo, hi) with lo <= hi")
    return lo, hi


def check_mantissa_bits(m: Any) -> int:
    """Validate the mantissa bits of the universal log-linear buckets (0..10)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise TypeError(f"mantissa_bits must be an integer in [0, 10]; got {m!r}")
    if not 0 <= m <= 10:
        raise ValueError(f"mantissa_bits must be in [0, 10]; got {m}")
    return int(m)


def uniform_edges(bins: int, lo: float, hi: float) -> np.ndarray:
    """Bin edges exactly as ``np.histogram`` builds them for a float64 input."""
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1, endpoint=True, dtype=np.float64)
