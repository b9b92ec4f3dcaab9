"""pyweightstat: fast, mergeable statistics of neural-network weights, and the study of what the
weights of optimal and suboptimal networks look like.

The engine (``describe``, ``describe_many``, ``histogram``, ``log_histogram``, ``quantile``,
``distance``, ``pairwise_distances``) is a compiled C++/CUDA core with a validating Python layer.
"""

from __future__ import annotations

from typing import Any

from . import _C
from .stats import (
    FIELDS,
    METRICS,
    Histogram,
    Summary,
    describe,
    describe_many,
    distance,
    histogram,
    log_histogram,
    pairwise_distances,
    quantile,
)

__version__ = _C.build_info()["version"]


def build_info() -> dict[str, Any]:
    """What this build of the engine contains.

    Returns
    -------
    dict
        ``version``, ``openmp`` (bool), ``cuda`` (bool: CUDA kernels compiled in),
        ``cuda_archs`` (list of int), ``simd`` (instruction set of the CPU kernels),
        ``max_threads`` and ``compiler``.
    """
    return dict(_C.build_info())


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads the engine uses (results do not depend on it)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Number of CPU threads the engine uses."""
    return int(_C.get_num_threads())


_LAZY = {
    "WeightTracker": "tracker",
    "STAT_FIELDS": "tracker",
    "TOTAL_NAME": "tracker",
    "node_strength": "node_strength",
    "summarize_node_strength": "node_strength",
    "LayerStrength": "node_strength",
}

_SUBMODULES = ("data", "distributed", "models", "plots", "study", "train")


def __getattr__(name: str) -> Any:
    # Parts that need torch import lazily so that `import pyweightstat` stays fast.
    import importlib

    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyweightstat' has no attribute {name!r}")


__all__ = [
    "FIELDS",
    "METRICS",
    "STAT_FIELDS",
    "TOTAL_NAME",
    "Histogram",
    "LayerStrength",
    "Summary",
    "WeightTracker",
    "__version__",
    "build_info",
    "describe",
    "describe_many",
    "distance",
    "get_num_threads",
    "histogram",
    "log_histogram",
    "node_strength",
    "pairwise_distances",
    "quantile",
    "set_num_threads",
    "summarize_node_strength",
]
