"""The study's statistics: groups, the C1 and C2 tests, rank correlations, accuracy prediction.

Every function below ``load_study_data`` is pure: NumPy arrays and dicts in, dicts out. The
tests (permutation tests, bootstrap intervals, rank correlations, Wilcoxon, Mann-Whitney,
p-value combination and FDR control) come from SciPy, the prediction from scikit-learn. The one
hand-written resampling procedure is the *stratified* permutation test of C2 (labels are
shuffled within each cell), which SciPy does not offer.

Decision rules of the claims table (also written into the report):

- **C1 distributions (JS / W1)**, per cell: the mean pairwise distance between the
  whole-network weight distributions of the suboptimal runs is compared with that of the
  optimal runs. *Supported* when it is larger for the suboptimal group with a one-sided
  permutation p < alpha; *not supported* otherwise; *inconclusive* when a group has fewer
  than ``min_group_size`` runs with finite weights. Pooled: the same test on the union of
  the per-cell groups (distances across cells included).
- **C1 statistics**, per cell: for each weight statistic, a one-sided permutation test that
  the suboptimal group is more dispersed (mean absolute deviation from the group median, as in
  the Brown-Forsythe test); p-values adjusted for the number of statistics (Benjamini-Hochberg).
  *Supported* when more than half the statistics are significantly more dispersed in the
  suboptimal group. Pooled: per statistic, the per-cell p-values combined (Stouffer), then the
  same rule.
- **C2 cross-cell distances**: the mean distance between optimal runs of *different* cells
  versus between suboptimal runs of different cells (per data set: across families; per
  family: across data sets; all: every pair of cells). *Supported* when the suboptimal
  distances are larger with a stratified permutation p < alpha.
- **C2 trajectories**, per data set: the optimal groups' mean trajectory of the whole-network
  weight std (normalised by its initial value, on a common training-progress grid) is compared
  between families by Spearman's rho. *Supported* when every pair of families has rho > 0
  with p < alpha.
- **Prediction (beyond the paper)**: a random forest predicts test accuracy from weight
  statistics on held-out runs (K-fold). *Supported* when the out-of-fold R^2 > 0.5 and the
  Kendall tau of predictions against accuracies has p < alpha.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from .config import DATASETS, FAMILIES, AnalysisConfig

__all__ = [
    "ANALYSIS_STATS",
    "StudyData",
    "aligned_counts",
    "analyze",
    "assign_groups",
    "c2_cross_cell_test",
    "cell_order",
    "dispersion",
    "dispersion_test",
    "distance_matrix",
    "load_study_data",
    "predict_accuracy",
    "rank_correlation",
    "within_group_distance_test",
]

#: Whole-network statistics analysed (``mean_abs`` = L1/count and ``rms`` = L2/sqrt(count)
#: replace the size-dependent norms).
ANALYSIS_STATS: tuple[str, ...] = (
    "mean",
    "std",
    "skew",
    "kurtosis",
    "min",
    "max",
    "mean_abs",
    "rms",
    "linf",
    "zero_frac",
    "near_zero_frac",
    "q01",
    "q25",
    "q50",
    "q75",
    "q99",
)
_LAYER_FEATURES: tuple[str, ...] = ("mean", "std", "q01", "q25", "q50", "q75", "q99")
OPTIMAL, SUBOPTIMAL, MIDDLE = "optimal", "suboptimal", "middle"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class StudyData:
    """Everything the analysis reads, loaded once from the results store.

    Attributes
    ----------
    runs : list of dict
        Run rows (see :meth:`ResultStore.load_runs`), statuses done/diverged/failed.
    hists : dict
        ``run_id -> whole-network log histogram record``.
    layer_stats : dict
        ``run_id -> list of per-tensor stats rows``.
    trajectories : dict
        ``run_id -> flat trajectory dict``.
    node_strength : dict
        ``run_id -> list of per-layer node-strength dicts``.
    """

    runs: list[dict[str, Any]]
    hists: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer_stats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trajectories: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    node_strength: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def load_study_data(store: Any) -> StudyData:
    """Read a :class:`~pyweightstat.study.store.ResultStore` into a :class:`StudyData`."""
    return StudyData(
        runs=store.load_runs(),
        hists=store.load_histograms(),
        layer_stats=store.load_stats(),
        trajectories=store.load_trajectories(),
        node_strength=store.load_node_strength(),
    )


def derived_stats(total: Mapping[str, Any] | None) -> dict[str, float]:
    """The :data:`ANALYSIS_STATS` of one whole-network stats row (NaN where missing)."""
    if not total:
        return dict.fromkeys(ANALYSIS_STATS, math.nan)
    out = {}
    count = float(total.get("count") or 0.0)
    for s in ANALYSIS_STATS:
        if s == "mean_abs":
            out[s] = float(total["l1"]) / count if count else math.nan
        elif s == "rms":
            out[s] = float(total["l2"]) / math.sqrt(count) if count else math.nan
        else:
            v = total.get(s)
            out[s] = math.nan if v is None else float(v)
    return out


def cell_order(key: tuple[str, str]) -> tuple[int, str, int, str]:
    """Sort key of a (dataset, family) cell: the canonical order of the study, then by name."""
    ds, fam = key
    di = DATASETS.index(ds) if ds in DATASETS else len(DATASETS)
    fi = FAMILIES.index(fam) if fam in FAMILIES else len(FAMILIES)
    return (di, ds, fi, fam)


def _finite_weights(run: Mapping[str, Any]) -> bool:
    t = run.get("total")
    return bool(t) and not (t.get("nonfinite") or 0) and (t.get("count") or 0) > 0


# ----------------------------------------------------------------------------------------------
# groups


def assign_groups(
    acc: Sequence[float] | np.ndarray,
    mode: str = "quantile",
    quantile: float = 0.25,
    delta: float = 0.02,
) -> np.ndarray:
    """Label runs of one cell optimal / suboptimal / middle by test accuracy.

    Parameters
    ----------
    acc : array-like of float
        Test accuracies of the runs of one cell (NaN = unknown: labelled middle).
    mode : {"quantile", "delta"}
        ``quantile``: optimal = accuracy >= the ``1 - quantile`` quantile, suboptimal =
        accuracy <= the ``quantile`` quantile (optimal wins ties). ``delta``: optimal = within
        ``delta`` of the best accuracy, suboptimal = every other run.
    quantile : float
        In (0, 0.5].
    delta : float
        > 0.

    Returns
    -------
    numpy.ndarray of str
        ``"optimal"``, ``"suboptimal"`` or ``"middle"`` per run.
    """
    a = np.asarray(acc, dtype=np.float64)
    if mode not in ("quantile", "delta"):
        raise ValueError(f"mode must be 'quantile' or 'delta', got {mode!r}")
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    labels = np.full(a.shape, MIDDLE, dtype=object)
    ok = np.isfinite(a)
    if not ok.any():
        return labels
    v = a[ok]
    if mode == "quantile":
        hi = np.quantile(v, 1.0 - quantile)
        lo = np.quantile(v, quantile)
        opt = ok & (a >= hi)
        sub = ok & (a <= lo) & ~opt
    else:
        best = v.max()
        opt = ok & (a >= best - delta)
        sub = ok & ~opt
    labels[opt] = OPTIMAL
    labels[sub] = SUBOPTIMAL
    return labels


# ----------------------------------------------------------------------------------------------
# C1: dispersion of statistics


def dispersion(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Across-run dispersion of one statistic: ``n``, ``mean``, ``std`` (ddof 1), ``cv``.

    ``cv`` is ``std / |mean|`` (NaN when the mean is 0).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n >= 2 else math.nan
    cv = std / abs(mean) if n >= 2 and mean != 0 else math.nan
    return {"n": n, "mean": mean, "std": std, "cv": cv}


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _log_std_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    sx = np.maximum(np.std(x, ddof=1, axis=axis), 1e-300)
    sy = np.maximum(np.std(y, ddof=1, axis=axis), 1e-300)
    return np.log(sx) - np.log(sy)


def _quiet_bootstrap(data: tuple, statistic: Any, **kw: Any) -> tuple[float, float]:
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = sps.bootstrap(data, statistic, method="percentile", **kw)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    except ValueError:
        return math.nan, math.nan
    return lo, hi


def dispersion_test(
    sub: Sequence[float] | np.ndarray,
    opt: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 9999,
    n_bootstrap: int = 1999,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Is the suboptimal group more dispersed than the optimal group in one statistic?

    Parameters
    ----------
    sub, opt : array-like of float
        The statistic's values in the suboptimal and optimal groups (non-finite dropped).
    n_resamples : int
        Permutations (exact enumeration when there are fewer distinct ones).
    n_bootstrap : int
        Bootstrap resamples of the ratio's confidence interval.
    confidence : float
        Confidence level of the interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``n_sub``, ``n_opt``, ``std_sub``, ``std_opt``, ``cv_sub``, ``cv_opt``, ``ratio``
        (``std_sub / std_opt``), ``diff`` (``std_sub - std_opt``), ``ci_low``/``ci_high``
        (percentile bootstrap interval of the ratio) and ``p`` (one-sided permutation test of
        the mean absolute deviation from the group median, suboptimal > optimal). NaN when a
        group has fewer than 2 values.
    """
    x = np.asarray(sub, dtype=np.float64)
    y = np.asarray(opt, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    dx, dy = dispersion(x), dispersion(y)
    out = {
        "n_sub": x.size,
        "n_opt": y.size,
        "std_sub": dx["std"],
        "std_opt": dy["std"],
        "cv_sub": dx["cv"],
        "cv_opt": dy["cv"],
        "ratio": math.nan,
        "diff": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
    }
    if x.size < 2 or y.size < 2:
        return out
    out["diff"] = dx["std"] - dy["std"]
    if dy["std"] > 0:
        out["ratio"] = dx["std"] / dy["std"]
    elif dx["std"] > 0:
        out["ratio"] = math.inf
    dev_x = np.abs(x - np.median(x))
    dev_y = np.abs(y - np.median(y))
    if np.ptp(np.concatenate([dev_x, dev_y])) == 0:
        out["p"] = 1.0
    else:
        res = sps.permutation_test(
            (dev_x, dev_y),
            _mean_diff,
            permutation_type="independent",
            vectorized=True,
            n_resamples=n_resamples,
            alternative="greater",
            random_state=seed,
        )
        out["p"] = float(res.pvalue)
    lo, hi = _quiet_bootstrap(
        (x, y),
        _log_std_ratio,
        vectorized=True,
        paired=False,
        n_resamples=n_bootstrap,
        confidence_level=confidence,
        random_state=seed,
    )
    out["ci_low"], out["ci_high"] = math.exp(lo), math.exp(hi)
    return out


# ----------------------------------------------------------------------------------------------
# distributions: shared grid and distances


def aligned_counts(hists: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Put universal log histograms on one shared window of the grid.

    Parameters
    ----------
    hists : sequence of dict
        Records with ``mantissa_bits``, ``first`` (global bucket index of ``counts[0]``) and
        ``counts``; all must have the same ``mantissa_bits``.

    Returns
    -------
    counts : numpy.ndarray
        ``(K, n)`` int64 counts on the shared window.
    edges : numpy.ndarray
        The ``n + 1`` edges of the window (float64).
    first : int
        Global index of the window's first bucket.
    """
    from pyweightstat.stats.reference import ref_log_edges

    if not hists:
        raise ValueError("hists must not be empty")
    ms = {int(h["mantissa_bits"]) for h in hists}
    if len(ms) != 1:
        raise ValueError(f"histograms have different mantissa_bits {sorted(ms)}")
    m = ms.pop()
    lo = min(int(h["first"]) for h in hists)
    hi = max(int(h["first"]) + len(h["counts"]) for h in hists)
    out = np.zeros((len(hists), hi - lo), dtype=np.int64)
    for i, h in enumerate(hists):
        f = int(h["first"]) - lo
        out[i, f : f + len(h["counts"])] = np.asarray(h["counts"], dtype=np.int64)
    edges = ref_log_edges(m)[lo : hi + 1]
    return out, edges, lo


def _engine_pairwise(hists: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray | None:
    """The engine's ``pairwise_distances`` on stored histograms, or None if unavailable."""
    try:
        import pyweightstat as pws

        make = pws.Histogram.from_dict
        objs = [
            make(
                {
                    "kind": "log",
                    "mantissa_bits": int(h["mantissa_bits"]),
                    "first": int(h["first"]),
                    "counts": np.asarray(h["counts"], dtype=np.int64).tolist(),
                    "underflow": int(h.get("underflow", 0)),
                    "overflow": int(h.get("overflow", 0)),
                    "nan_count": int(h.get("nan_count", 0)),
                }
            )
            for h in hists
        ]
        return np.asarray(pws.pairwise_distances(objs, metric), dtype=np.float64)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return None


def distance_matrix(
    hists: Sequence[Mapping[str, Any]], metric: str = "js", *, use_engine: bool = True
) -> np.ndarray:
    """K x K distances between weight distributions (histograms on the shared log grid).

    Uses the engine's :func:`pyweightstat.pairwise_distances` when available; otherwise the
    float64 reference (:func:`pyweightstat.stats.reference.ref_distance`) on the histograms
    aligned by :func:`aligned_counts`.

    Parameters
    ----------
    hists : sequence of dict
        Log histogram records (same ``mantissa_bits``).
    metric : str
        ``js`` (Jensen-Shannon divergence, base 2), ``wasserstein``, ``ks``, ``hellinger``,
        ``tv``.
    use_engine : bool
        Try the engine first.

    Returns
    -------
    numpy.ndarray
        Symmetric ``(K, K)`` float64 matrix with a zero diagonal.
    """
    from pyweightstat.stats.reference import METRICS, ref_distance

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    k = len(hists)
    if k == 0:
        return np.zeros((0, 0))
    if use_engine:
        d = _engine_pairwise(hists, metric)
        if d is not None and d.shape == (k, k):
            return d
    counts, edges, _ = aligned_counts(hists)
    d = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            d[i, j] = d[j, i] = ref_distance(counts[i], counts[j], edges, metric)
    return d


def _mean_offdiag(d: np.ndarray, idx: np.ndarray) -> float:
    idx = np.asarray(idx, dtype=np.int64)
    sub = d[np.ix_(idx, idx)]
    mask = idx[:, None] != idx[None, :]
    # a (bootstrap) sample made of copies of one run has no spread at all
    return float(sub[mask].mean()) if mask.any() else 0.0


def within_group_distance_test(
    d: np.ndarray,
    sub_idx: Sequence[int] | np.ndarray,
    opt_idx: Sequence[int] | np.ndarray,
    *,
    n_resamples: int = 9999,
    n_bootstrap: int = 1999,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Are suboptimal runs farther apart from each other than optimal runs are?

    Parameters
    ----------
    d : numpy.ndarray
        ``(K, K)`` distance matrix.
    sub_idx, opt_idx : array-like of int
        Row indices of the suboptimal and optimal runs.
    n_resamples, n_bootstrap : int
        Permutations of the test and bootstrap resamples of the interval.
    confidence : float
    seed : int

    Returns
    -------
    dict
        ``n_sub``, ``n_opt``, ``mean_sub``, ``mean_opt`` (mean pairwise distance within each
        group), ``ratio`` (sub/opt), ``diff`` (sub - opt), ``ci_low``/``ci_high`` (bootstrap
        interval of ``diff``, resampling runs, self-pairs excluded) and ``p`` (one-sided
        permutation test of the group labels, sub > opt). NaN when a group has < 2 runs.
    """
    s = np.asarray(sub_idx, dtype=np.int64)
    o = np.asarray(opt_idx, dtype=np.int64)
    out = {
        "n_sub": int(s.size),
        "n_opt": int(o.size),
        "mean_sub": math.nan,
        "mean_opt": math.nan,
        "ratio": math.nan,
        "diff": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
    }
    if s.size < 2 or o.size < 2:
        return out
    ms, mo = _mean_offdiag(d, s), _mean_offdiag(d, o)
    out.update({"mean_sub": ms, "mean_opt": mo, "diff": ms - mo})
    out["ratio"] = ms / mo if mo > 0 else (math.inf if ms > 0 else math.nan)

    def stat(a: np.ndarray, b: np.ndarray) -> float:
        return _mean_offdiag(d, a) - _mean_offdiag(d, b)

    res = sps.permutation_test(
        (s, o),
        stat,
        permutation_type="independent",
        vectorized=False,
        n_resamples=n_resamples,
        alternative="greater",
        random_state=seed,
    )
    out["p"] = float(res.pvalue)
    out["ci_low"], out["ci_high"] = _quiet_bootstrap(
        (s, o),
        stat,
        vectorized=False,
        paired=False,
        n_resamples=n_bootstrap,
        confidence_level=confidence,
        random_state=seed,
    )
    return out


# ----------------------------------------------------------------------------------------------
# C2: across cells


def c2_cross_cell_test(
    d: np.ndarray,
    cells: Sequence[Any],
    labels: Sequence[str],
    pair_ok: Any = None,
    *,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, float]:
    """Are suboptimal runs of different cells farther apart than optimal runs of different cells?

    Stratified permutation test: the optimal/suboptimal labels are shuffled *within each cell*
    (group sizes kept), and the statistic ``mean d(sub_i, sub_j) - mean d(opt_i, opt_j)`` over
    pairs of runs from different cells (accepted by ``pair_ok``) is recomputed.

    Parameters
    ----------
    d : numpy.ndarray
        ``(K, K)`` distances between the runs.
    cells : sequence
        Cell key of each run (hashable).
    labels : sequence of str
        ``optimal`` / ``suboptimal`` / other (ignored) for each run.
    pair_ok : callable, optional
        ``pair_ok(cell_a, cell_b) -> bool`` selects which cell pairs count (default: every
        pair of different cells).
    n_resamples : int
    seed : int

    Returns
    -------
    dict
        ``mean_opt``, ``mean_sub``, ``ratio``, ``diff``, ``p`` (``(1 + #{perm >= obs}) /
        (1 + n_resamples)``), ``n_pairs_opt``, ``n_pairs_sub``.
    """
    cells = list(cells)
    lab = np.asarray(labels, dtype=object)
    keep = np.flatnonzero((lab == OPTIMAL) | (lab == SUBOPTIMAL))
    out = {
        "mean_opt": math.nan,
        "mean_sub": math.nan,
        "ratio": math.nan,
        "diff": math.nan,
        "p": math.nan,
        "n_pairs_opt": 0,
        "n_pairs_sub": 0,
    }
    if keep.size < 4:
        return out
    keys = sorted({cells[i] for i in keep}, key=str)
    code = {c: n for n, c in enumerate(keys)}
    cc = np.array([code[cells[i]] for i in keep])
    ok = np.zeros((len(keys), len(keys)), dtype=bool)
    for a, b in itertools.product(range(len(keys)), repeat=2):
        if a != b:
            ok[a, b] = True if pair_ok is None else bool(pair_ok(keys[a], keys[b]))
    pair_mask = ok[cc[:, None], cc[None, :]]
    dd = d[np.ix_(keep, keep)]
    is_sub0 = lab[keep] == SUBOPTIMAL

    def statistic(is_sub: np.ndarray) -> tuple[float, float, int, int]:
        ms = pair_mask & is_sub[:, None] & is_sub[None, :]
        mo = pair_mask & ~is_sub[:, None] & ~is_sub[None, :]
        if not ms.any() or not mo.any():
            return math.nan, math.nan, int(ms.sum()), int(mo.sum())
        return float(dd[ms].mean()), float(dd[mo].mean()), int(ms.sum()), int(mo.sum())

    ms, mo, ns, no = statistic(is_sub0)
    out.update({"mean_sub": ms, "mean_opt": mo, "n_pairs_sub": ns // 2, "n_pairs_opt": no // 2})
    if not (math.isfinite(ms) and math.isfinite(mo)):
        return out
    out["diff"] = ms - mo
    out["ratio"] = ms / mo if mo > 0 else math.nan
    obs = ms - mo
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(cc == c) for c in range(len(keys))]
    ge = 0
    perm = is_sub0.copy()
    for _ in range(n_resamples):
        for m in members:
            perm[m] = rng.permutation(is_sub0[m])
        a, b, _, _ = statistic(perm)
        if math.isfinite(a) and math.isfinite(b) and a - b >= obs - 1e-12 * abs(obs):
            ge += 1
    out["p"] = (1 + ge) / (1 + n_resamples)
    return out


def normalised_trajectory(
    traj: Mapping[str, np.ndarray], points: int = 20, stat: str = "std"
) -> np.ndarray | None:
    """A whole-network statistic over training, divided by its first value, on a common grid.

    Parameters
    ----------
    traj : mapping
        A trajectory as stored: the :meth:`WeightTracker.trajectory` layout (``steps``,
        ``stat_fields``, ``stats`` of shape ``(T, P + 1, S)`` with the whole network last) or a
        flat one (``step`` and ``total/<stat>`` arrays).
    points : int
        Points of the training-progress grid ``linspace(0, 1, points)``.
    stat : str
        Statistic name (default ``std``).

    Returns
    -------
    numpy.ndarray or None
        ``points`` values, or None when the trajectory lacks the statistic.
    """
    y = _traj_total(traj, stat)
    if y is None or y.size < 2:
        return None
    steps = _traj_steps(traj, y.size)
    if not np.all(np.isfinite(y)) or y[0] == 0:
        return None
    span = steps[-1] - steps[0]
    if span <= 0:
        return None
    x = (steps - steps[0]) / span
    return np.interp(np.linspace(0.0, 1.0, points), x, y / y[0])


def _traj_total(traj: Mapping[str, np.ndarray], stat: str) -> np.ndarray | None:
    if "stats" in traj and "stat_fields" in traj:  # WeightTracker.trajectory() layout
        fields = [str(f) for f in np.asarray(traj["stat_fields"]).ravel()]
        arr = np.asarray(traj["stats"], dtype=np.float64)
        if stat in fields and arr.ndim == 3 and arr.shape[0] > 0:
            return arr[:, -1, fields.index(stat)]
        return None
    for key in (f"total/{stat}", f"__total__/{stat}", f"model/{stat}", f"whole/{stat}"):
        if key in traj:
            return np.asarray(traj[key], dtype=np.float64).ravel()
    cands = [k for k in traj if k.endswith(f"/{stat}") and "total" in k.lower()]
    if cands:
        return np.asarray(traj[sorted(cands)[0]], dtype=np.float64).ravel()
    return None


def _traj_steps(traj: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    for key in ("step", "steps"):
        if key in traj and np.asarray(traj[key]).size == n:
            return np.asarray(traj[key], dtype=np.float64).ravel()
    return np.arange(n, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# rank correlations and prediction


def rank_correlation(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Spearman's rho and Kendall's tau with p-values and Fisher-z confidence intervals.

    The standard errors on the z scale are ``sqrt((1 + rho^2 / 2) / (n - 3))`` for Spearman
    (Bonett & Wright 2000) and ``sqrt(0.437 / (n - 4))`` for Kendall (Fieller et al. 1957).

    Returns
    -------
    dict
        ``n``, ``spearman``, ``spearman_p``, ``spearman_ci_low``, ``spearman_ci_high`` and the
        same for ``kendall``; NaN when fewer than 5 finite pairs or a constant input.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    out: dict[str, float] = {"n": n}
    for name in ("spearman", "kendall"):
        out.update(
            {
                name: math.nan,
                f"{name}_p": math.nan,
                f"{name}_ci_low": math.nan,
                f"{name}_ci_high": math.nan,
            }
        )
    if n < 5 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    zc = sps.norm.ppf(0.5 + confidence / 2)
    rho, p = sps.spearmanr(a, b)
    tau, pt = sps.kendalltau(a, b)
    for name, r, pv, se in (
        ("spearman", float(rho), float(p), math.sqrt((1 + float(rho) ** 2 / 2) / (n - 3))),
        ("kendall", float(tau), float(pt), math.sqrt(0.437 / (n - 4))),
    ):
        z = math.atanh(max(min(r, 0.999999), -0.999999))
        out.update(
            {
                name: r,
                f"{name}_p": pv,
                f"{name}_ci_low": math.tanh(z - zc * se),
                f"{name}_ci_high": math.tanh(z + zc * se),
            }
        )
    return out


def predict_accuracy(
    features: np.ndarray, acc: np.ndarray, *, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Predict test accuracy from weight statistics on held-out runs (K-fold CV).

    A :class:`sklearn.ensemble.RandomForestRegressor` (100 trees, leaves of >= 2 runs) is fit
    on K-1 folds and predicts the held-out fold.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n_runs, n_features)``, finite.
    acc : numpy.ndarray
        ``(n_runs,)`` test accuracies.
    folds : int
        Number of folds (reduced to ``n_runs`` when larger).
    seed : int

    Returns
    -------
    dict
        ``n``, ``r2`` (out-of-fold), ``kendall``, ``kendall_p``, ``predicted`` (list);
        NaN metrics when fewer than 8 runs or constant accuracies.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(acc, dtype=np.float64)
    n = int(y.size)
    out: dict[str, Any] = {
        "n": n,
        "r2": math.nan,
        "kendall": math.nan,
        "kendall_p": math.nan,
        "predicted": [],
    }
    if n < 8 or np.ptp(y) == 0:
        return out
    model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed)
    cv = KFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    pred = cross_val_predict(model, x, y, cv=cv)
    out["r2"] = float(r2_score(y, pred))
    if np.ptp(pred) > 0:
        tau, p = sps.kendalltau(pred, y)
        out["kendall"], out["kendall_p"] = float(tau), float(p)
    out["predicted"] = [float(v) for v in pred]
    return out


def _feature_vector(run: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> np.ndarray:
    base = derived_stats(run.get("total"))
    feats = [base[s] for s in ANALYSIS_STATS]
    weights = [r for r in layers if r.get("kind") == "weight"]
    for layer in (weights[0] if weights else None, weights[-1] if weights else None):
        for f in _LAYER_FEATURES:
            feats.append(math.nan if layer is None or layer.get(f) is None else float(layer[f]))
    return np.asarray(feats, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# the whole analysis


def _claim(claim: str, cell: str, status: str, **numbers: Any) -> dict[str, Any]:
    return {"claim": claim, "cell": cell, "status": status, **numbers}


def _cell_name(ds: str, fam: str) -> str:
    return f"{ds}/{fam}"


def analyze(data: StudyData, cfg: AnalysisConfig | None = None) -> dict[str, Any]:
    """Run the whole analysis on stored results.

    Parameters
    ----------
    data : StudyData
        What :func:`load_study_data` read.
    cfg : AnalysisConfig, optional
        Group definition, significance level and resampling sizes (defaults if omitted).

    Returns
    -------
    dict
        ``cells`` (per-cell results: groups, accuracy summary, C1 tests, rank correlations,
        prediction, node strength, accuracy-bin distances), ``pooled``, ``c2``, ``claims``
        (the claims table rows), ``run_ids`` / ``labels`` / ``cells_of`` (the analysed runs in
        the order of the distance matrices ``distances[metric]``), ``counts`` (runs per status)
        and ``config``.
    """
    cfg = cfg or AnalysisConfig()
    rs = cfg.seed
    runs = [r for r in data.runs if r["status"] in ("done", "diverged")]
    counts: dict[str, int] = {}
    for r in data.runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    cell_keys = sorted({(r["dataset"], r["family"]) for r in runs}, key=cell_order)

    # groups per cell (every done/diverged run takes part in the grouping)
    label_of: dict[str, str] = {}
    for key in cell_keys:
        members = [r for r in runs if (r["dataset"], r["family"]) == key]
        acc = np.array([np.nan if r["test_acc"] is None else r["test_acc"] for r in members])
        labs = assign_groups(acc, cfg.group_mode, cfg.group_quantile, cfg.group_delta)
        for r, lab in zip(members, labs, strict=True):
            label_of[r["run_id"]] = str(lab)

    # runs whose final weights are usable for weight analyses
    wruns = [r for r in runs if _finite_weights(r) and r["run_id"] in data.hists]
    ids = [r["run_id"] for r in wruns]
    labels = [label_of[r["run_id"]] for r in wruns]
    cells_of = [(r["dataset"], r["family"]) for r in wruns]
    hists = [data.hists[i] for i in ids]
    distances = {
        m: (distance_matrix(hists, m) if hists else np.zeros((0, 0))) for m in ("js", "wasserstein")
    }
    stat_rows = {r["run_id"]: derived_stats(r.get("total")) for r in wruns}

    cells: dict[str, dict[str, Any]] = {}
    claims: list[dict[str, Any]] = []
    stat_p_per_cell: dict[str, dict[str, tuple[float, float]]] = {}
    for key in cell_keys:
        name = _cell_name(*key)
        members = [r for r in runs if (r["dataset"], r["family"]) == key]
        acc = np.array([np.nan if r["test_acc"] is None else r["test_acc"] for r in members])
        idx = [i for i, c in enumerate(cells_of) if c == key]
        opt_i = np.array([i for i in idx if labels[i] == OPTIMAL], dtype=np.int64)
        sub_i = np.array([i for i in idx if labels[i] == SUBOPTIMAL], dtype=np.int64)
        small = min(opt_i.size, sub_i.size) < cfg.min_group_size
        res: dict[str, Any] = {
            "dataset": key[0],
            "family": key[1],
            "n_runs": len(members),
            "n_weights": len(idx),
            "n_opt": int(opt_i.size),
            "n_sub": int(sub_i.size),
            "acc_best": float(np.nanmax(acc)) if np.isfinite(acc).any() else math.nan,
            "acc_median": float(np.nanmedian(acc)) if np.isfinite(acc).any() else math.nan,
            "acc_worst": float(np.nanmin(acc)) if np.isfinite(acc).any() else math.nan,
            "indices": idx,
        }
        # C1: distributions
        res["c1_dist"] = {}
        for metric, label in (
            ("js", "C1 distributions (JS)"),
            ("wasserstein", "C1 distributions (W1)"),
        ):
            t = within_group_distance_test(
                distances[metric],
                sub_i,
                opt_i,
                n_resamples=cfg.n_permutations,
                n_bootstrap=cfg.n_bootstrap,
                seed=rs,
            )
            res["c1_dist"][metric] = t
            claims.append(
                _claim(
                    label,
                    name,
                    _decide(t, small, cfg.alpha),
                    ratio=t["ratio"],
                    diff=t["diff"],
                    ci_low=t["ci_low"],
                    ci_high=t["ci_high"],
                    p=t["p"],
                    n_opt=t["n_opt"],
                    n_sub=t["n_sub"],
                )
            )
        # C1: statistics
        disp = {}
        for s in ANALYSIS_STATS:
            sv = [stat_rows[ids[i]][s] for i in sub_i]
            ov = [stat_rows[ids[i]][s] for i in opt_i]
            disp[s] = dispersion_test(
                sv, ov, n_resamples=cfg.n_permutations, n_bootstrap=cfg.n_bootstrap, seed=rs
            )
        _bh(disp)
        res["c1_stats"] = disp
        stat_p_per_cell[name] = {s: (disp[s]["p"], disp[s]["ratio"]) for s in ANALYSIS_STATS}
        claims.append(_stats_claim(name, disp, small, cfg.alpha))
        # rank correlations with accuracy (every run with finite weights)
        accs = np.array([wruns[i]["test_acc"] for i in idx], dtype=np.float64)
        res["rank_corr"] = {
            s: rank_correlation([stat_rows[ids[i]][s] for i in idx], accs) for s in ANALYSIS_STATS
        }
        # prediction
        feats = np.array([_feature_vector(wruns[i], data.layer_stats.get(ids[i], [])) for i in idx])
        res["prediction"] = _predict(feats, accs, cfg)
        claims.append(_prediction_claim(name, res["prediction"], cfg.alpha))
        # node strength by group
        res["node_strength"] = _node_strength_by_group(data, ids, opt_i, sub_i)
        # accuracy bins
        res["acc_bins"] = _accuracy_bins(hists, idx, accs, cfg.accuracy_bin_width)
        cells[name] = res

    pooled = _pooled(
        distances, labels, cells_of, ids, stat_rows, wruns, data, stat_p_per_cell, cfg, claims
    )
    c2 = _c2(distances["js"], cells_of, labels, ids, data, cfg, claims)
    return {
        "config": cfg.__dict__,
        "counts": counts,
        "cells": cells,
        "pooled": pooled,
        "c2": c2,
        "claims": claims,
        "run_ids": ids,
        "labels": labels,
        "cells_of": [list(c) for c in cells_of],
        "label_of": label_of,
        "distances": distances,
    }


def _decide(t: Mapping[str, float], small: bool, alpha: float) -> str:
    if small or not math.isfinite(t.get("p", math.nan)):
        return INCONCLUSIVE
    if t["p"] < alpha and t["diff"] > 0:
        return SUPPORTED
    return NOT_SUPPORTED


def _bh(disp: dict[str, dict[str, float]]) -> None:
    names = [s for s, d in disp.items() if math.isfinite(d["p"])]
    if not names:
        for d in disp.values():
            d["p_adj"] = math.nan
        return
    adj = sps.false_discovery_control([disp[s]["p"] for s in names], method="bh")
    for d in disp.values():
        d["p_adj"] = math.nan
    for s, a in zip(names, adj, strict=True):
        disp[s]["p_adj"] = float(a)


def _stats_claim(
    cell: str, disp: Mapping[str, Mapping[str, float]], small: bool, alpha: float
) -> dict[str, Any]:
    tested = [d for d in disp.values() if math.isfinite(d.get("p_adj", math.nan))]
    sig = [d for d in tested if d["p_adj"] < alpha and d["diff"] > 0]
    ratios = [d["ratio"] for d in tested if math.isfinite(d["ratio"])]
    med = float(np.median(ratios)) if ratios else math.nan
    if small or not tested:
        status = INCONCLUSIVE
    else:
        status = SUPPORTED if len(sig) > len(tested) / 2 else NOT_SUPPORTED
    return _claim(
        "C1 statistics dispersion",
        cell,
        status,
        ratio=med,
        n_significant=len(sig),
        n_tested=len(tested),
        p=float(min((d["p_adj"] for d in tested), default=math.nan)),
    )


def _predict(feats: np.ndarray, accs: np.ndarray, cfg: AnalysisConfig) -> dict[str, Any]:
    if feats.size == 0:
        return predict_accuracy(np.zeros((0, 1)), np.zeros(0))
    ok = np.all(np.isfinite(feats), axis=0)
    return predict_accuracy(feats[:, ok], accs, folds=cfg.cv_folds, seed=cfg.seed)


def _prediction_claim(cell: str, pr: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    if not math.isfinite(pr["r2"]):
        status = INCONCLUSIVE
    elif pr["r2"] > 0.5 and math.isfinite(pr["kendall_p"]) and pr["kendall_p"] < alpha:
        status = SUPPORTED
    else:
        status = NOT_SUPPORTED
    return _claim(
        "Prediction from weights (beyond the paper)",
        cell,
        status,
        r2=pr["r2"],
        kendall=pr["kendall"],
        p=pr["kendall_p"],
        n=pr["n"],
    )


def _node_strength_by_group(
    data: StudyData, ids: Sequence[str], opt_i: np.ndarray, sub_i: np.ndarray
) -> dict[str, Any]:
    def per_run(i: int) -> float:
        layers = data.node_strength.get(ids[i], [])
        vals = [
            x["fluctuation_abs"]
            for x in layers
            if x.get("fluctuation_abs") is not None and math.isfinite(x["fluctuation_abs"])
        ]
        return float(np.mean(vals)) if vals else math.nan

    o = np.array([per_run(i) for i in opt_i], dtype=np.float64)
    s = np.array([per_run(i) for i in sub_i], dtype=np.float64)
    o, s = o[np.isfinite(o)], s[np.isfinite(s)]
    out = {
        "opt": dispersion(o),
        "sub": dispersion(s),
        "mannwhitney_p": math.nan,
        "opt_values": o.tolist(),
        "sub_values": s.tolist(),
    }
    if o.size >= 2 and s.size >= 2 and np.ptp(np.concatenate([o, s])) > 0:
        out["mannwhitney_p"] = float(sps.mannwhitneyu(s, o, alternative="two-sided").pvalue)
    return out


def _accuracy_bins(
    hists: Sequence[Mapping[str, Any]], idx: Sequence[int], accs: np.ndarray, width: float
) -> dict[str, Any]:
    if len(idx) == 0:
        return {"bins": [], "js": []}
    b = np.floor(accs / width).astype(np.int64)
    uniq = sorted(set(b.tolist()))
    merged = []
    for u in uniq:
        members = [hists[idx[j]] for j in range(len(idx)) if b[j] == u]
        counts, _, first = aligned_counts(members)
        merged.append(
            {
                "mantissa_bits": members[0]["mantissa_bits"],
                "first": first,
                "counts": counts.sum(axis=0),
            }
        )
    js = distance_matrix(merged, "js") if len(merged) > 1 else np.zeros((len(merged),) * 2)
    return {
        "bins": [[u * width, (u + 1) * width] for u in uniq],
        "n": [int((b == u).sum()) for u in uniq],
        "js": js.tolist(),
    }


def _pooled(
    distances: Mapping[str, np.ndarray],
    labels: Sequence[str],
    cells_of: Sequence,
    ids: Sequence[str],
    stat_rows: Mapping[str, Mapping[str, float]],
    wruns: Sequence[Mapping[str, Any]],
    data: StudyData,
    stat_p_per_cell: Mapping[str, Mapping[str, tuple[float, float]]],
    cfg: AnalysisConfig,
    claims: list[dict[str, Any]],
) -> dict[str, Any]:
    lab = np.asarray(labels, dtype=object)
    opt_i = np.flatnonzero(lab == OPTIMAL)
    sub_i = np.flatnonzero(lab == SUBOPTIMAL)
    small = min(opt_i.size, sub_i.size) < cfg.min_group_size
    out: dict[str, Any] = {"n_opt": int(opt_i.size), "n_sub": int(sub_i.size), "c1_dist": {}}
    for metric, label in (
        ("js", "C1 distributions (JS)"),
        ("wasserstein", "C1 distributions (W1)"),
    ):
        t = within_group_distance_test(
            distances[metric],
            sub_i,
            opt_i,
            n_resamples=cfg.n_permutations,
            n_bootstrap=cfg.n_bootstrap,
            seed=cfg.seed,
        )
        out["c1_dist"][metric] = t
        claims.append(
            _claim(
                label,
                "pooled",
                _decide(t, small, cfg.alpha),
                ratio=t["ratio"],
                diff=t["diff"],
                ci_low=t["ci_low"],
                ci_high=t["ci_high"],
                p=t["p"],
                n_opt=t["n_opt"],
                n_sub=t["n_sub"],
            )
        )
    # statistics: per-cell one-sided p-values combined (Stouffer), then BH over statistics
    comb: dict[str, dict[str, float]] = {}
    for s in ANALYSIS_STATS:
        per = [p[s] for p in stat_p_per_cell.values() if math.isfinite(p[s][0])]
        ps = [x[0] for x in per]
        ratios = [x[1] for x in per if math.isfinite(x[1])]
        med = float(np.median(ratios)) if ratios else math.nan
        if ps:
            r = sps.combine_pvalues(np.clip(ps, 1e-12, 1 - 1e-12), method="stouffer")
            comb[s] = {"p": float(r.pvalue), "n_cells": len(ps), "ratio": med}
        else:
            comb[s] = {"p": math.nan, "n_cells": 0, "ratio": med}
    _bh(comb)
    tested = [d for d in comb.values() if math.isfinite(d.get("p_adj", math.nan))]
    sig = [d for d in tested if d["p_adj"] < cfg.alpha]
    status = (
        INCONCLUSIVE if not tested else (SUPPORTED if len(sig) > len(tested) / 2 else NOT_SUPPORTED)
    )
    claims.append(
        _claim(
            "C1 statistics dispersion",
            "pooled",
            status,
            n_significant=len(sig),
            n_tested=len(tested),
            p=float(min((d["p_adj"] for d in tested), default=math.nan)),
        )
    )
    out["c1_stats_combined"] = comb
    # rank correlations on within-cell ranks
    acc = np.array([r["test_acc"] for r in wruns], dtype=np.float64)
    out["rank_corr"] = {}
    cell_arr = [tuple(c) for c in cells_of]
    for s in ANALYSIS_STATS:
        v = np.array([stat_rows[i][s] for i in ids], dtype=np.float64)
        out["rank_corr"][s] = rank_correlation(
            _within_cell_ranks(v, cell_arr), _within_cell_ranks(acc, cell_arr)
        )
    feats = np.array([_feature_vector(r, data.layer_stats.get(r["run_id"], [])) for r in wruns])
    out["prediction"] = (
        _predict(feats, acc, cfg) if len(wruns) else predict_accuracy(np.zeros((0, 1)), np.zeros(0))
    )
    claims.append(_prediction_claim("pooled", out["prediction"], cfg.alpha))
    return out


def _within_cell_ranks(v: np.ndarray, cells: Sequence[tuple]) -> np.ndarray:
    out = np.full(v.shape, np.nan)
    for c in set(cells):
        m = np.array([x == c for x in cells])
        ok = m & np.isfinite(v)
        if ok.sum() >= 2:
            out[ok] = (sps.rankdata(v[ok]) - 0.5) / ok.sum()
    return out


def _c2(
    d: np.ndarray,
    cells_of: Sequence[tuple],
    labels: Sequence[str],
    ids: Sequence[str],
    data: StudyData,
    cfg: AnalysisConfig,
    claims: list[dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"cross": {}, "trajectories": {}}
    cells = [tuple(c) for c in cells_of]
    order = sorted(set(cells), key=cell_order)
    datasets = list(dict.fromkeys(c[0] for c in order))
    families = sorted({c[1] for c in cells}, key=lambda f: cell_order(("", f)))
    tests: list[tuple[str, Any]] = [
        (f"{ds} (across families)", (lambda a, b, ds=ds: a[0] == ds and b[0] == ds))
        for ds in datasets
    ]
    tests += [
        (f"{fam} (across data sets)", (lambda a, b, fam=fam: a[1] == fam and b[1] == fam))
        for fam in families
    ]
    tests.append(("all cells", None))
    lab = np.asarray(labels, dtype=object)
    for name, ok in tests:
        # enough runs in at least two cells?
        involved = {
            c
            for c, lb in zip(cells, lab, strict=True)
            if lb in (OPTIMAL, SUBOPTIMAL) and (ok is None or ok(c, c))
        }
        t = c2_cross_cell_test(
            d, cells, labels, ok, n_resamples=min(cfg.n_permutations, 1999), seed=cfg.seed
        )
        out["cross"][name] = t
        if len(involved) < 2 or t["n_pairs_opt"] == 0 or t["n_pairs_sub"] == 0:
            status = INCONCLUSIVE
        else:
            status = _decide(t, False, cfg.alpha)
        claims.append(
            _claim(
                "C2 cross-cell distances (JS)",
                name,
                status,
                ratio=t["ratio"],
                diff=t["diff"],
                p=t["p"],
            )
        )
    # trajectories: per data set, mean normalised std trajectory of each family's groups
    for ds in datasets:
        res: dict[str, Any] = {"curves": {}, "pairs": {}}
        for group in (OPTIMAL, SUBOPTIMAL):
            for fam in families:
                curves = []
                for i, c in enumerate(cells):
                    if c == (ds, fam) and labels[i] == group and ids[i] in data.trajectories:
                        y = normalised_trajectory(data.trajectories[ids[i]], cfg.trajectory_points)
                        if y is not None:
                            curves.append(y)
                if len(curves) >= 1:
                    res["curves"][f"{group}/{fam}"] = {
                        "mean": np.mean(curves, axis=0).tolist(),
                        "n": len(curves),
                    }
            for fa, fb in itertools.combinations(families, 2):
                ca, cb = res["curves"].get(f"{group}/{fa}"), res["curves"].get(f"{group}/{fb}")
                if ca and cb:
                    r = rank_correlation(ca["mean"], cb["mean"])
                    res["pairs"][f"{group}/{fa}-{fb}"] = {
                        "spearman": r["spearman"],
                        "p": r["spearman_p"],
                        "n_a": ca["n"],
                        "n_b": cb["n"],
                    }
        opt_pairs = [v for k, v in res["pairs"].items() if k.startswith(OPTIMAL)]
        want = len(list(itertools.combinations(families, 2)))
        if (
            len(families) < 2
            or len(opt_pairs) < want
            or any(
                min(v["n_a"], v["n_b"]) < cfg.min_group_size or not math.isfinite(v["p"])
                for v in opt_pairs
            )
        ):
            status = INCONCLUSIVE
        elif all(v["spearman"] > 0 and v["p"] < cfg.alpha for v in opt_pairs):
            status = SUPPORTED
        else:
            status = NOT_SUPPORTED
        rhos = [v["spearman"] for v in opt_pairs if math.isfinite(v["spearman"])]
        claims.append(
            _claim(
                "C2 trajectory similarity (std)",
                ds,
                status,
                rho_min=float(min(rhos)) if rhos else math.nan,
                p=float(max((v["p"] for v in opt_pairs), default=math.nan)),
            )
        )
        out["trajectories"][ds] = res
    return out
