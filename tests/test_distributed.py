"""pyweightstat.distributed.all_reduce with two gloo processes on the CPU."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stats_checks import assert_summary_matches, full_log_counts, summary_dict

import pyweightstat as pws
from pyweightstat.distributed import all_reduce
from pyweightstat.stats.reference import (
    ref_histogram,
    ref_log_histogram,
    ref_log_num_buckets,
    ref_moments,
)

WORLD = 2
RANGE = (-3.0, 5.0)


def _rank_data(rank: int) -> np.ndarray:
    g = np.random.default_rng(100 + rank)
    if rank == 0:
        x = g.standard_normal(20_000).astype(np.float32)
        x[:3] = [np.nan, np.inf, 0.0]
    else:  # different size, offset and scale: a different log-histogram window
        x = (1e3 + 50 * g.standard_normal(7_001)).astype(np.float32)
        x[:2] = [-np.inf, 1e6]
    return x


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x = _rank_data(rank)
        s = all_reduce(pws.describe(x, bins=40, range=RANGE))
        s_log = all_reduce(pws.describe(x, mantissa_bits=5))
        h = all_reduce(pws.histogram(x, bins=40, range=RANGE))
        lg = all_reduce(pws.log_histogram(x, mantissa_bits=5))
        result = {
            "summary": summary_dict(s),
            "summary_hist": s.hist.counts.tolist(),
            "summary_log": summary_dict(s_log),
            "summary_log_hist": (int(s_log.hist.first), s_log.hist.counts.tolist()),
            "hist": (h.counts.tolist(), h.underflow, h.overflow, h.nan_count),
            "log": (int(lg.first), lg.counts.tolist(), lg.underflow, lg.overflow, lg.nan_count),
        }
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_gloo_ranks(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = []
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    r0, r1 = results
    # every rank ends with the same global result (NaN-safe comparison through repr)
    assert repr(r0) == repr(r1)

    everything = np.concatenate([_rank_data(r) for r in range(WORLD)])

    class _View:  # attribute access over the stored summary dict
        def __init__(self, d: dict) -> None:
            self.__dict__.update(d)

    ref = ref_moments(everything)
    assert_summary_matches(_View(r0["summary"]), ref, "all_reduce(describe)")
    assert_summary_matches(_View(r0["summary_log"]), ref, "all_reduce(describe, log)")

    counts, under, over, nans = ref_histogram(everything, 40, RANGE)
    assert r0["summary_hist"] == counts.tolist()
    assert r0["hist"] == (counts.tolist(), under, over, nans)

    m = 5
    log_counts, lunder, lover, lnans = ref_log_histogram(everything, m)
    n = ref_log_num_buckets(m)
    for key in ("log", "summary_log_hist"):
        first, window = r0[key][0], r0[key][1]
        h = _View({"first": first, "counts": np.asarray(window, dtype=np.int64)})
        np.testing.assert_array_equal(full_log_counts(h, n), log_counts)
    assert r0["log"][2:] == (lunder, lover, lnans)


def test_without_process_group_returns_a_copy(rng: np.random.Generator) -> None:
    assert not dist.is_initialized()
    x = rng.standard_normal(100).astype(np.float32)
    s = pws.describe(x)
    r = all_reduce(s)
    assert r is not s
    assert_summary_matches(r, ref_moments(x))
    h = pws.histogram(x, bins=7)
    rh = all_reduce(h)
    np.testing.assert_array_equal(rh.counts, h.counts)
    np.testing.assert_array_equal(rh.edges, h.edges)


def test_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="obj"):
        all_reduce(np.zeros(3))
    with pytest.raises(TypeError, match="obj"):
        all_reduce({"count": 3})
