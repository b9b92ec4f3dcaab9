"""Figures of the study, one function per figure (matplotlib, non-interactive Agg backend).

Every function reads stored results (a :class:`~pyweightstat.study.analysis.StudyData`, the
dict returned by :func:`~pyweightstat.study.analysis.analyze`, and for the weight images the
stored weights files) and writes one PNG; nothing is re-trained or re-measured. Each returns the
path it wrote. :data:`FIGURES` lists them in report order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "FIGURES",
    "accuracy_bin_js",
    "accuracy_vs_capacity",
    "distance_heatmaps",
    "first_layer_weights",
    "group_histograms",
    "node_strength_distributions",
    "stat_vs_accuracy",
    "trajectories",
]

_GROUP_COLORS = {"optimal": "tab:green", "suboptimal": "tab:red", "middle": "0.6"}
_IN_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _cells(res: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    keys = [(c["dataset"], c["family"]) for c in res["cells"].values()]
    datasets = list(dict.fromkeys(k[0] for k in keys))
    families = list(dict.fromkeys(k[1] for k in keys))
    return datasets, families


def _grid(res: Mapping[str, Any], size: float = 3.2) -> tuple[Any, np.ndarray, list, list]:
    ds, fams = _cells(res)
    fig, axes = plt.subplots(
        max(1, len(ds)),
        max(1, len(fams)),
        figsize=(size * max(1, len(fams)), 0.85 * size * max(1, len(ds))),
        squeeze=False,
    )
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.08, top=0.94, wspace=0.35, hspace=0.55)
    return fig, axes, ds, fams


def _panels(
    res: Mapping[str, Any], axes: np.ndarray, ds: list, fams: list
) -> Iterator[tuple[Any, str, str, Mapping[str, Any] | None]]:
    """(axes, data set, family, cell results or None) for every panel of a :func:`_grid`."""
    for i, d in enumerate(ds):
        for j, f in enumerate(fams):
            yield axes[i, j], d, f, res["cells"].get(f"{d}/{f}")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:  # minor tick labels of log axes overlap the major ones
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _runs_by_cell(data: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    from pyweightstat.study.analysis import cell_order

    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in data.runs:
        if r["status"] in ("done", "diverged") and r.get("test_acc") is not None:
            out.setdefault((r["dataset"], r["family"]), []).append(r)
    return {k: out[k] for k in sorted(out, key=cell_order)}


def _empty(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def accuracy_vs_capacity(data: Any, res: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy against parameter count per cell, coloured by group.

    Parameters
    ----------
    data : StudyData
        Stored results (:func:`pyweightstat.study.analysis.load_study_data`).
    res : dict
        The output of :func:`pyweightstat.study.analysis.analyze` on ``data``.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    fig, axes, ds, fams = _grid(res)
    by_cell = _runs_by_cell(data)
    label_of = res["label_of"]
    for i, d in enumerate(ds):
        for j, f in enumerate(fams):
            ax = axes[i, j]
            runs = by_cell.get((d, f), [])
            if not runs:
                _empty(ax)
                continue
            for g, col in _GROUP_COLORS.items():
                sel = [r for r in runs if label_of.get(r["run_id"]) == g]
                if sel:
                    ax.scatter(
                        [r["n_params"] for r in sel],
                        [r["test_acc"] for r in sel],
                        s=18,
                        color=col,
                        label=g,
                        alpha=0.8,
                    )
            ax.set_xscale("log")
            ax.set_title(f"{d} / {f}", fontsize=9)
            ax.set_xlabel("parameters", fontsize=8)
            ax.set_ylabel("test accuracy", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def _coarse(counts: np.ndarray, edges: np.ndarray, factor: int = 16) -> tuple:
    n = counts.shape[-1]
    k = math.ceil(n / factor)
    pad = k * factor - n
    c = (
        np.pad(counts, [(0, 0)] * (counts.ndim - 1) + [(0, pad)])
        .reshape(*counts.shape[:-1], k, factor)
        .sum(-1)
    )
    e = edges[::factor]
    if e.size < k + 1:
        e = np.append(e, edges[-1])
    centres = 0.5 * (e[:-1] + e[1:])
    return c, centres


def group_histograms(data: Any, res: Mapping[str, Any], path: str | Path) -> Path:
    """Whole-network weight distributions, optimal vs suboptimal runs overlaid, per cell.

    Parameters
    ----------
    data : StudyData
        Stored results (:func:`pyweightstat.study.analysis.load_study_data`).
    res : dict
        The output of :func:`pyweightstat.study.analysis.analyze` on ``data``.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    from pyweightstat.study.analysis import aligned_counts

    fig, axes, ds, fams = _grid(res)
    ids, labels = res["run_ids"], res["labels"]
    for ax, d, f, cell in _panels(res, axes, ds, fams):
        idx = cell["indices"] if cell else []
        sel = [k for k in idx if labels[k] in ("optimal", "suboptimal")]
        if not sel:
            _empty(ax)
            continue
        counts, edges, _ = aligned_counts([data.hists[ids[k]] for k in sel])
        mass = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        coarse, centres = _coarse(mass, edges)
        for row, k in enumerate(sel):
            ax.plot(centres, coarse[row], color=_GROUP_COLORS[labels[k]], alpha=0.35, lw=0.8)
        for g in ("optimal", "suboptimal"):
            rows = [row for row, k in enumerate(sel) if labels[k] == g]
            if rows:
                ax.plot(
                    centres,
                    coarse[rows].mean(axis=0),
                    color=_GROUP_COLORS[g],
                    lw=2,
                    label=f"{g} (n={len(rows)})",
                )
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_title(f"{d} / {f}", fontsize=9)
        ax.set_xlabel("weight value", fontsize=8)
        ax.set_ylabel("mass per bucket", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return _save(fig, path)


def stat_vs_accuracy(
    data: Any,
    res: Mapping[str, Any],
    path: str | Path,
    stats: Sequence[str] = ("std", "kurtosis", "mean_abs", "q99"),
) -> Path:
    """Whole-network statistics against test accuracy (every run, one colour per cell).

    Parameters
    ----------
    data, res, path
        As for :func:`accuracy_vs_capacity`.
    stats : sequence of str
        Statistics of :data:`pyweightstat.study.analysis.ANALYSIS_STATS` to plot, one panel each.

    Returns
    -------
    Path
    """
    from pyweightstat.study.analysis import derived_stats

    fig, axes = plt.subplots(1, len(stats), figsize=(3.4 * len(stats), 3.2), squeeze=False)
    by_cell = _runs_by_cell(data)
    cmap = plt.get_cmap("tab10")
    markers = {"dnn": "o", "cnn": "s", "vit": "^"}
    for j, s in enumerate(stats):
        ax = axes[0, j]
        for c, ((d, f), runs) in enumerate(by_cell.items()):
            vals = [(r["test_acc"], derived_stats(r.get("total"))[s]) for r in runs]
            vals = [v for v in vals if np.isfinite(v[1])]
            if vals:
                a, v = zip(*vals, strict=True)
                ax.scatter(
                    a,
                    v,
                    s=12,
                    color=cmap(c % 10),
                    marker=markers.get(f, "o"),
                    label=f"{d}/{f}",
                    alpha=0.8,
                )
        if s in ("std", "mean_abs", "rms", "linf"):
            ax.set_yscale("log")
        ax.set_xlabel("test accuracy", fontsize=8)
        ax.set_ylabel(s, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.86, bottom=0.16, top=0.95, wspace=0.35)
    return _save(fig, path)


def distance_heatmaps(
    data: Any, res: Mapping[str, Any], path: str | Path, metric: str = "js"
) -> Path:
    """Run-by-run distance matrices per cell, runs ordered by test accuracy (worst first).

    Parameters
    ----------
    data, res, path
        As for :func:`accuracy_vs_capacity`.
    metric : str
        ``js`` or ``wasserstein`` (the matrices computed by the analysis).

    Returns
    -------
    Path
    """
    fig, axes, ds, fams = _grid(res)
    dmat = np.asarray(res["distances"][metric])
    ids = res["run_ids"]
    acc = {r["run_id"]: r["test_acc"] for r in data.runs}
    for ax, d, f, cell in _panels(res, axes, ds, fams):
        idx = list(cell["indices"]) if cell else []
        if len(idx) < 2:
            _empty(ax)
            continue
        idx.sort(key=lambda k: acc[ids[k]])
        im = ax.imshow(dmat[np.ix_(idx, idx)], cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax.set_title(f"{d} / {f}: {metric}", fontsize=9)
        ax.set_xlabel("runs by accuracy →", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def accuracy_bin_js(data: Any, res: Mapping[str, Any], path: str | Path) -> Path:
    """Jensen-Shannon divergence between merged weight distributions of accuracy bins.

    Parameters
    ----------
    data : StudyData
        Stored results (:func:`pyweightstat.study.analysis.load_study_data`).
    res : dict
        The output of :func:`pyweightstat.study.analysis.analyze` on ``data``.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    fig, axes, ds, fams = _grid(res)
    for ax, d, f, cell in _panels(res, axes, ds, fams):
        bins = cell["acc_bins"] if cell else {"bins": []}
        if len(bins["bins"]) < 2:
            _empty(ax, "fewer than 2 bins")
            continue
        m = np.asarray(bins["js"])
        im = ax.imshow(m, cmap="magma", origin="lower", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        lab = [f"{lo:.3f}" for lo, _ in bins["bins"]]
        step = max(1, len(lab) // 6)
        ax.set_xticks(range(0, len(lab), step), lab[::step], rotation=90, fontsize=6)
        ax.set_yticks(range(0, len(lab), step), lab[::step], fontsize=6)
        ax.set_title(f"{d} / {f}: JS across accuracy bins", fontsize=9)
    return _save(fig, path)


def node_strength_distributions(data: Any, res: Mapping[str, Any], path: str | Path) -> Path:
    """Distributions of first-layer node strengths (|w| variant), optimal vs suboptimal.

    Parameters
    ----------
    data : StudyData
        Stored results (:func:`pyweightstat.study.analysis.load_study_data`).
    res : dict
        The output of :func:`pyweightstat.study.analysis.analyze` on ``data``.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    fig, axes, ds, fams = _grid(res)
    ids, labels = res["run_ids"], res["labels"]
    for ax, d, f, cell in _panels(res, axes, ds, fams):
        idx = cell["indices"] if cell else []
        drawn = False
        vals_all = {
            g: [
                data.node_strength[ids[k]][0]["strength_abs"]
                for k in idx
                if labels[k] == g and data.node_strength.get(ids[k])
            ]
            for g in ("optimal", "suboptimal")
        }
        finite = [np.concatenate(v) for v in vals_all.values() if v]
        finite = [v[np.isfinite(v) & (v > 0)] for v in finite]
        if finite and all(v.size for v in finite):
            lo = min(v.min() for v in finite)
            hi = max(v.max() for v in finite)
            edges = np.geomspace(lo, hi, 40) if hi > lo else np.array([lo, lo * 1.01])
            for g, v in vals_all.items():
                if not v:
                    continue
                x = np.concatenate(v)
                x = x[np.isfinite(x) & (x > 0)]
                ax.hist(
                    x,
                    bins=edges,
                    density=True,
                    histtype="step",
                    lw=1.5,
                    color=_GROUP_COLORS[g],
                    label=f"{g} ({len(v)} runs)",
                )
                drawn = True
            ax.set_xscale("log")
        if not drawn:
            _empty(ax)
            continue
        name = data.node_strength[ids[idx[0]]][0]["layer"] if idx else ""
        ax.set_title(f"{d} / {f}: {name}", fontsize=9)
        ax.set_xlabel("node strength (|w|)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return _save(fig, path)


def _tiles(w: np.ndarray, dataset: str, n: int) -> list[np.ndarray]:
    c, h, wd = _IN_SHAPES.get(dataset, (1, 0, 0))
    if w.ndim == 4:  # conv: (out, in, kh, kw)
        return [w[k].mean(axis=0) for k in range(min(n, w.shape[0]))]
    if w.ndim == 2:
        fan_in = w.shape[1]
        if fan_in == c * h * wd:
            return [w[k].reshape(c, h, wd).mean(axis=0) for k in range(min(n, w.shape[0]))]
        p = math.isqrt(fan_in // c) if fan_in % c == 0 else 0
        if p and c * p * p == fan_in:
            return [w[k].reshape(c, p, p).mean(axis=0) for k in range(min(n, w.shape[0]))]
        return [w]
    return [np.atleast_2d(w)]


def _mosaic(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles side by side (each scaled to [-1, 1]), separated by NaN gaps."""
    h = max(t.shape[0] for t in tiles)
    cols = []
    for t in tiles:
        lim = float(np.nanmax(np.abs(t))) if t.size else 0.0
        tt = np.full((h, t.shape[1]), np.nan)
        tt[: t.shape[0]] = t / lim if lim > 0 else t
        cols += [tt, np.full((h, max(1, t.shape[1] // 8)), np.nan)]
    return np.concatenate(cols[:-1], axis=1)


def first_layer_weights(
    data: Any, res: Mapping[str, Any], study_dir: str | Path, path: str | Path, n: int = 6
) -> Path:
    """First-layer weights as images: best and worst run of each cell (from the weights files).

    Each tile is one unit's incoming weights (channel mean; a DNN unit over the image, a conv
    filter, a ViT patch embedding over the patch), scaled to its own maximum (red > 0, blue < 0).

    Parameters
    ----------
    data, res
        As for :func:`accuracy_vs_capacity`.
    study_dir : str or Path
        The study directory (weights paths are stored relative to it).
    path : str or Path
        PNG file to write.
    n : int
        Units shown per run.

    Returns
    -------
    Path
    """
    import torch

    by_cell = _runs_by_cell(data)
    cells = list(by_cell)
    fig, axes = plt.subplots(
        max(1, len(cells)), 2, figsize=(10, 1.3 * max(1, len(cells))), squeeze=False
    )
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.95, wspace=0.05, hspace=0.6)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    for ax in axes.ravel():
        ax.set_axis_off()
    for row, cell in enumerate(cells):
        runs = sorted(
            (r for r in by_cell[cell] if r.get("weights_path")), key=lambda r: r["test_acc"]
        )
        if not runs:
            continue
        for half, r in enumerate((runs[-1], runs[0])):
            sd = torch.load(
                Path(study_dir) / r["weights_path"], weights_only=True, map_location="cpu"
            )
            w = next((v for k, v in sd.items() if k.endswith("weight") and v.ndim >= 2), None)
            if w is None:
                continue
            tiles = _tiles(np.nan_to_num(w.float().numpy()), cell[0], n)[:n]
            ax = axes[row, half]
            ax.imshow(_mosaic(tiles), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(
                f"{cell[0]}/{cell[1]} {'best' if half == 0 else 'worst'}: acc {r['test_acc']:.3f}",
                fontsize=7,
            )
    return _save(fig, path)


def trajectories(data: Any, res: Mapping[str, Any], path: str | Path) -> Path:
    """Whole-network weight std over training (normalised by its start), by group and cell.

    Parameters
    ----------
    data : StudyData
        Stored results (:func:`pyweightstat.study.analysis.load_study_data`).
    res : dict
        The output of :func:`pyweightstat.study.analysis.analyze` on ``data``.
    path : str or Path
        PNG file to write.

    Returns
    -------
    Path
        ``path``.
    """
    from pyweightstat.study.analysis import normalised_trajectory

    fig, axes, ds, fams = _grid(res)
    ids, labels = res["run_ids"], res["labels"]
    points = int(res["config"].get("trajectory_points", 20))
    grid = np.linspace(0, 1, points)
    for ax, d, f, cell in _panels(res, axes, ds, fams):
        idx = cell["indices"] if cell else []
        drawn = False
        for g in ("optimal", "suboptimal"):
            curves = []
            for k in idx:
                if labels[k] == g and ids[k] in data.trajectories:
                    y = normalised_trajectory(data.trajectories[ids[k]], points)
                    if y is not None:
                        curves.append(y)
                        ax.plot(grid, y, color=_GROUP_COLORS[g], alpha=0.3, lw=0.8)
            if curves:
                ax.plot(
                    grid,
                    np.mean(curves, axis=0),
                    color=_GROUP_COLORS[g],
                    lw=2,
                    label=f"{g} (n={len(curves)})",
                )
                drawn = True
        if not drawn:
            _empty(ax, "no trajectories")
            continue
        ax.set_title(f"{d} / {f}", fontsize=9)
        ax.set_xlabel("training progress", fontsize=8)
        ax.set_ylabel("std / std at start", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return _save(fig, path)


#: (file stem, title, function) in report order; functions take (data, res, out_path) except
#: ``first_layer_weights``, which also takes the study directory.
FIGURES: list[tuple[str, str, Callable[..., Path]]] = [
    ("accuracy_vs_capacity", "Accuracy vs capacity", accuracy_vs_capacity),
    ("group_histograms", "Optimal vs suboptimal weight distributions", group_histograms),
    ("stat_vs_accuracy", "Weight statistics vs accuracy", stat_vs_accuracy),
    ("distance_heatmaps", "Run-by-run JS distances ordered by accuracy", distance_heatmaps),
    ("accuracy_bin_js", "JS divergence across accuracy bins", accuracy_bin_js),
    ("node_strength", "Node-strength distributions", node_strength_distributions),
    ("first_layer_weights", "First-layer weights of the best and worst runs", first_layer_weights),
    ("trajectories", "Weight std over training", trajectories),
]
