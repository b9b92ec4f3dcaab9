"""Analysis functions on synthetic tables where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pyweightstat.stats.reference import ref_distance, ref_log_edges, ref_log_histogram
from pyweightstat.study import analysis as an
from pyweightstat.study.config import AnalysisConfig

FAST = AnalysisConfig(n_permutations=999, n_bootstrap=299, min_group_size=3, cv_folds=3)


def _hist(x: np.ndarray, m: int = 7) -> dict:
    counts, under, over, nan = ref_log_histogram(x, m)
    nz = np.flatnonzero(counts)
    first, last = int(nz[0]), int(nz[-1]) + 1
    return {
        "mantissa_bits": m,
        "first": first,
        "counts": counts[first:last],
        "underflow": under,
        "overflow": over,
        "nan_count": nan,
    }


def _total(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.01, 0.25, 0.5, 0.75, 0.99])
    return {
        "count": x.size,
        "mean": x.mean(),
        "std": x.std(),
        "skew": sps.skew(x),
        "kurtosis": sps.kurtosis(x),
        "min": x.min(),
        "max": x.max(),
        "l1": np.abs(x).sum(),
        "l2": np.sqrt((x**2).sum()),
        "linf": np.abs(x).max(),
        "zero_frac": 0.0,
        "near_zero_frac": float(np.mean(np.abs(x) < 1e-3)),
        "nonfinite": 0,
        "q01": q[0],
        "q25": q[1],
        "q50": q[2],
        "q75": q[3],
        "q99": q[4],
    }


def _study(sub_spread: float, n: int = 24, cells=(("mnist", "dnn"),), seed: int = 0):
    """n runs per cell; weights ~ N(0, sigma) with sigma depending on accuracy.

    Optimal (high accuracy) runs all have sigma 0.05; the sigma of the other runs varies by a
    factor of up to ``exp(sub_spread)`` (0 = identical distributions for every run).
    """
    rng = np.random.default_rng(seed)
    runs, hists = [], {}
    for ds, fam in cells:
        acc = np.linspace(0.3, 0.98, n)
        for i in range(n):
            bad = 1.0 - i / (n - 1)  # 1 for the worst run, 0 for the best
            sigma = 0.05 * math.exp(sub_spread * bad * (-1) ** i)
            x = rng.normal(0.0, sigma, 4000)
            rid = f"{ds}-{fam}-{i}"
            runs.append(
                {
                    "run_id": rid,
                    "dataset": ds,
                    "family": fam,
                    "status": "done",
                    "test_acc": float(acc[i]),
                    "total": _total(x),
                }
            )
            hists[rid] = _hist(x)
    return an.StudyData(runs=runs, hists=hists)


def test_assign_groups_quantile_and_delta():
    acc = np.arange(8) / 10.0
    lab = an.assign_groups(acc, "quantile", 0.25)
    assert list(lab[:2]) == ["suboptimal"] * 2
    assert list(lab[-2:]) == ["optimal"] * 2
    assert set(lab[2:-2]) == {"middle"}
    lab = an.assign_groups([0.9, 0.89, 0.5, np.nan], "delta", delta=0.02)
    assert list(lab) == ["optimal", "optimal", "suboptimal", "middle"]
    with pytest.raises(ValueError, match="mode"):
        an.assign_groups(acc, "best")
    with pytest.raises(ValueError, match="quantile"):
        an.assign_groups(acc, "quantile", 0.7)


def test_dispersion_matches_numpy():
    v = np.array([1.0, 2.0, 4.0, np.nan])
    d = an.dispersion(v)
    assert d["n"] == 3
    assert d["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert d["cv"] == pytest.approx(np.std([1, 2, 4], ddof=1) / np.mean([1, 2, 4]))


def test_dispersion_test_detects_real_difference():
    rng = np.random.default_rng(1)
    sub = rng.normal(0, 5.0, 12)
    opt = rng.normal(0, 1.0, 12)
    t = an.dispersion_test(sub, opt, n_resamples=1999, n_bootstrap=499)
    assert t["p"] < 0.05
    assert t["ratio"] == pytest.approx(np.std(sub, ddof=1) / np.std(opt, ddof=1))
    assert t["ci_low"] <= t["ratio"] <= t["ci_high"]


def test_dispersion_test_no_false_positive_on_identical_distributions():
    rng = np.random.default_rng(2)
    ps = [
        an.dispersion_test(
            rng.normal(size=10), rng.normal(size=10), n_resamples=499, n_bootstrap=99, seed=k
        )["p"]
        for k in range(40)
    ]
    # a valid test: about alpha of the p-values below alpha (40 draws: allow up to 7)
    assert sum(p < 0.05 for p in ps) <= 7


def test_distance_matrix_reference_and_symmetry():
    rng = np.random.default_rng(3)
    hs = [_hist(rng.normal(0, s, 2000)) for s in (0.01, 0.02, 0.05)]
    d = an.distance_matrix(hs, "js", use_engine=False)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    counts, edges, first = an.aligned_counts(hs)
    full = ref_log_edges(7)
    assert np.array_equal(edges, full[first : first + counts.shape[1] + 1])
    assert d[0, 2] == pytest.approx(ref_distance(counts[0], counts[2], edges, "js"))
    assert d[0, 2] > d[0, 1] > 0
    assert an._engine_pairwise(hs, "wasserstein") is not None  # the engine path is taken
    d_engine = an.distance_matrix(hs, "wasserstein")
    d_ref = an.distance_matrix(hs, "wasserstein", use_engine=False)
    np.testing.assert_allclose(d_engine, d_ref, rtol=1e-9, atol=1e-15)


def test_within_group_distance_test_detects_spread():
    rng = np.random.default_rng(4)
    # 5 optimal runs at one point, 5 suboptimal runs scattered
    pts = np.concatenate([rng.normal(0, 0.01, 5), rng.normal(0, 1.0, 5)])
    d = np.abs(pts[:, None] - pts[None, :])
    t = an.within_group_distance_test(
        d, np.arange(5, 10), np.arange(5), n_resamples=999, n_bootstrap=199
    )
    assert t["p"] < 0.05 and t["ratio"] > 1
    assert t["mean_opt"] == pytest.approx(d[:5, :5][~np.eye(5, dtype=bool)].mean())


def test_rank_correlation_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    r = an.rank_correlation(x, y)
    assert r["spearman"] == pytest.approx(sps.spearmanr(x, y).statistic)
    assert r["kendall"] == pytest.approx(sps.kendalltau(x, y).statistic)
    assert r["spearman_ci_low"] < r["spearman"] < r["spearman_ci_high"]
    assert math.isnan(an.rank_correlation([1, 2], [3, 4])["spearman"])


def test_predict_accuracy_learns_a_real_signal():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 3))
    y = 0.5 + 0.1 * x[:, 0]
    r = an.predict_accuracy(x, y, folds=4)
    assert r["r2"] > 0.5 and r["kendall_p"] < 0.05
    noise = an.predict_accuracy(rng.normal(size=(40, 3)), rng.uniform(size=40), folds=4)
    assert noise["r2"] < 0.5


def test_analyze_supports_c1_when_suboptimal_runs_vary():
    res = an.analyze(_study(sub_spread=2.0), FAST)
    rows = {(c["claim"], c["cell"]): c for c in res["claims"]}
    js = rows[("C1 distributions (JS)", "mnist/dnn")]
    assert js["status"] == "supported", js
    assert js["ratio"] > 1 and js["p"] < 0.05
    assert rows[("C1 statistics dispersion", "mnist/dnn")]["status"] == "supported"


def test_analyze_gives_no_false_claim_on_identical_distributions():
    res = an.analyze(_study(sub_spread=0.0), FAST)
    for c in res["claims"]:
        if c["claim"].startswith("C1"):
            assert c["status"] != "supported", c


def test_analyze_small_groups_are_inconclusive():
    res = an.analyze(_study(sub_spread=2.0, n=6), FAST)
    rows = {(c["claim"], c["cell"]): c for c in res["claims"]}
    assert rows[("C1 distributions (JS)", "mnist/dnn")]["status"] == "inconclusive"


def test_c2_cross_cell_test_detects_shared_optimum():
    res = an.analyze(_study(sub_spread=2.0, n=12, cells=(("mnist", "dnn"), ("mnist", "cnn"))), FAST)
    cross = res["c2"]["cross"]["mnist (across families)"]
    assert cross["p"] < 0.05 and cross["ratio"] > 1
    same = an.analyze(
        _study(sub_spread=0.0, n=12, cells=(("mnist", "dnn"), ("mnist", "cnn"))), FAST
    )
    assert same["c2"]["cross"]["mnist (across families)"]["p"] > 0.01


def test_normalised_trajectory():
    traj = {"step": np.array([0, 10, 20]), "total/std": np.array([2.0, 3.0, 4.0])}
    y = an.normalised_trajectory(traj, points=5)
    np.testing.assert_allclose(y, [1.0, 1.25, 1.5, 1.75, 2.0])
    assert an.normalised_trajectory({"step": np.arange(3)}, 5) is None
    stats = np.zeros((3, 2, 2))
    stats[:, -1, 1] = [2.0, 3.0, 4.0]
    tracker_layout = {
        "steps": np.array([5, 15, 25]),
        "stat_fields": np.array(["mean", "std"]),
        "stats": stats,
    }
    np.testing.assert_allclose(an.normalised_trajectory(tracker_layout, points=5), y)


def test_diverged_runs_are_grouped_but_their_nonfinite_weights_are_not_compared():
    data = _study(sub_spread=2.0)
    worst = data.runs[0]
    worst["status"] = "diverged"
    worst["total"] = {**worst["total"], "nonfinite": 7}
    data.runs.append(
        {
            "run_id": "x",
            "dataset": "mnist",
            "family": "dnn",
            "status": "failed",
            "test_acc": None,
            "total": None,
        }
    )
    res = an.analyze(data, FAST)
    assert res["label_of"][worst["run_id"]] == "suboptimal"
    assert worst["run_id"] not in res["run_ids"] and "x" not in res["run_ids"]
    assert res["counts"] == {"done": 23, "diverged": 1, "failed": 1}
    cell = res["cells"]["mnist/dnn"]
    assert cell["n_runs"] == 24 and cell["n_weights"] == 23
    assert res["distances"]["js"].shape == (23, 23)


def test_delta_groups_in_analyze():
    cfg = AnalysisConfig(
        group_mode="delta", group_delta=0.1, n_permutations=199, n_bootstrap=99, cv_folds=3
    )
    res = an.analyze(_study(sub_spread=2.0), cfg)
    acc = {r["run_id"]: r["test_acc"] for r in _study(sub_spread=2.0).runs}
    best = max(acc.values())
    for rid, lab in res["label_of"].items():
        assert lab == ("optimal" if acc[rid] >= best - 0.1 else "suboptimal")
