"""The statistics engine's public API (validation in Python, work in ``pyweightstat._C``)."""

from .api import describe, describe_many, histogram, log_histogram, merge_all, quantile
from .distances import METRICS, distance, pairwise_distances
from .histogram import Histogram
from .summary import FIELDS, Summary

__all__ = [
    "FIELDS",
    "METRICS",
    "Histogram",
    "Summary",
    "describe",
    "describe_many",
    "distance",
    "histogram",
    "log_histogram",
    "merge_all",
    "pairwise_distances",
    "quantile",
]
