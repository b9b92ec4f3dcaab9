"""The study report: ``report.md`` and a self-contained ``report.html`` (figures embedded).

The report opens with the claims table (claim x cell -> supported / not supported /
inconclusive, with effect sizes and p-values), states the decision rules and the limits of the
protocol (a reconstruction from the paper's abstract; a declared non-canonical CIFAR-10 copy),
then shows the figures and the detailed tables. Both files are rendered from the same list of
blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .analysis import ANALYSIS_STATS, StudyData

__all__ = ["REPORT_SECTIONS", "build_report", "fmt"]

#: Section headings every report contains, in order.
REPORT_SECTIONS: tuple[str, ...] = (
    "Claims",
    "How to read this report",
    "Figures",
    "Accuracy per cell",
    "C1: distances between weight distributions",
    "C1: dispersion of weight statistics",
    "C2: across data sets and families",
    "Rank correlations with test accuracy",
    "Predicting accuracy from weights",
    "Node strength by group",
    "Runs and provenance",
)

PAPER = (
    'Zheng et al. 2024, "On Learnable Parameters of Optimal and Suboptimal Deep Learning '
    'Models" (arXiv 2408.11720)'
)


def fmt(x: Any, digits: int = 3) -> str:
    """Format a number for a table (``-`` for missing or NaN).

    Parameters
    ----------
    x : number or None
    digits : int
        Significant digits.

    Returns
    -------
    str
    """
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) < 10**-(digits) or abs(v) >= 10**5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _p(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


class _Doc:
    def __init__(self) -> None:
        self.blocks: list[tuple[Any, ...]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", list(headers), [[str(c) for c in r] for r in rows]))

    def img(self, title: str, path: Path, rel: str) -> None:
        self.blocks.append(("img", title, path, rel))

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"{'#' * b[1]} {b[2]}\n")
            elif b[0] == "p":
                out.append(f"{b[1]}\n")
            elif b[0] == "note":
                out.append("> " + b[1].replace("\n", "\n> ") + "\n")
            elif b[0] == "table":
                headers, rows = b[1], b[2]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                for r in rows:
                    out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
                out.append("")
            elif b[0] == "img":
                out.append(f"![{b[1]}]({b[3]})\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
            "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
            "th{background:#f0f0f0}blockquote{border-left:4px solid #c90;margin:1em 0;"
            "padding:0.3em 1em;background:#fff8e8}img{max-width:100%}"
            ".supported{background:#d8f5d8}.not-supported{background:#f8dcdc}"
            ".inconclusive{background:#eee}</style></head><body>",
        ]
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "note":
                parts.append(f"<blockquote>{html.escape(b[1])}</blockquote>")
            elif b[0] == "table":
                parts.append(
                    "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>"
                )
                for r in b[2]:
                    cells = []
                    for c in r:
                        cls = {
                            "supported": "supported",
                            "not supported": "not-supported",
                            "inconclusive": "inconclusive",
                        }.get(c)
                        attr = f' class="{cls}"' if cls else ""
                        cells.append(f"<td{attr}>{html.escape(c)}</td>")
                    parts.append("<tr>" + "".join(cells) + "</tr>")
                parts.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[2]).read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(b[1])}" '
                    f'src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(b[1])}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


def _effect(c: Mapping[str, Any]) -> str:
    if "r2" in c:
        return f"R²={fmt(c['r2'])}, τ={fmt(c.get('kendall'))}"
    if "rho_min" in c:
        return f"min ρ={fmt(c['rho_min'])}"
    if "n_significant" in c:
        s = f"{c['n_significant']}/{c['n_tested']} stats more dispersed"
        if "ratio" in c:
            s += f", median std ratio {fmt(c['ratio'])}"
        return s
    s = f"ratio sub/opt {fmt(c.get('ratio'))}"
    if "ci_low" in c and not math.isnan(float(c.get("ci_low", math.nan))):
        s += f", diff {fmt(c.get('diff'))} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"
    return s


def _n(c: Mapping[str, Any]) -> str:
    if "n_opt" in c:
        return f"{c['n_opt']} / {c['n_sub']}"
    if "n" in c:
        return str(c["n"])
    return "-"


def build_report(
    study_dir: str | Path,
    data: StudyData,
    res: Mapping[str, Any],
    *,
    study_config: Mapping[str, Any] | None = None,
    wall_s: float | None = None,
    figures: bool = True,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into the study directory.

    Parameters
    ----------
    study_dir : path
        The study directory (holds the database and weights).
    data : StudyData
        The stored results.
    res : mapping
        The output of :func:`~pyweightstat.study.analysis.analyze`.
    study_config : mapping, optional
        ``StudyConfig.to_dict()`` of the study (shown in the report).
    wall_s : float, optional
        Wall time of the study command, if known.
    figures : bool
        Draw the figures (the tables are written either way).

    Returns
    -------
    dict
        ``{"md": path, "html": path, "<figure stem>": path, ...}``.
    """
    from pyweightstat import plots

    study_dir = Path(study_dir)
    fig_dir = study_dir / "figures"
    written: dict[str, Path] = {}
    doc = _Doc()
    cfg = study_config or {}
    runs = data.runs
    counts = res.get("counts", {})
    prov = next((r["provenance"] for r in runs if r.get("provenance")), {}) or {}
    canonical = {
        r["dataset"]: r["provenance"].get("data_canonical", True)
        for r in runs
        if r.get("provenance") and "data_canonical" in r["provenance"]
    }

    title = "pyweightstat study report"
    doc.h(1, title)
    doc.p(
        f"Preset `{cfg.get('name', '?')}`: {len(runs)} runs "
        f"({counts.get('done', 0)} done, {counts.get('diverged', 0)} diverged, "
        f"{counts.get('failed', 0)} failed) in {len(res['cells'])} cells; generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; study wall time {wall_s / 60:.1f} min" if wall_s else "")
        + "."
    )
    doc.note(
        f"This study tests the claims of {PAPER} from its abstract. The paper's body (exact "
        "grids, thresholds and numbers) is not available, so the protocol here is a documented "
        "reconstruction (capacity sweep plus training perturbations, optimal = top quartile "
        "and suboptimal = bottom quartile of test accuracy within each data set x family "
        "cell). The verdicts below are what *our* data say under the stated rules; they are "
        "not the paper's numbers."
    )
    nonc = sorted(ds for ds, ok in canonical.items() if not ok)
    if nonc:
        doc.note(
            f"Non-canonical data: {', '.join(nonc)} was loaded from a declared non-canonical "
            "copy (SHA256SUMS). The CIFAR-10 copy used in this repository is a JPEG-degraded "
            "reconstruction of the original batches (original order and labels), so CIFAR-10 "
            "accuracies here are not comparable to published numbers."
        )
    # -- claims ----------
    doc.h(2, "Claims")
    doc.p(
        "C1: successful networks are similar to each other in their converged weights; poor "
        "networks vary. C2: very different models (DNN, CNN, ViT) show similar learning "
        "characteristics. 'ratio sub/opt' compares the suboptimal group with the optimal "
        "group (> 1: the suboptimal runs vary more); n = optimal / suboptimal runs. The "
        "first table counts the per-cell verdicts of each claim (per data set / family for "
        "C2); the second gives every verdict with its numbers."
    )
    claim_names = list(dict.fromkeys(c["claim"] for c in res["claims"]))
    summary = []
    for name in claim_names:
        rows_c = [c for c in res["claims"] if c["claim"] == name]
        tally = {
            v: sum(c["status"] == v for c in rows_c if c["cell"] != "pooled")
            for v in ("supported", "not supported", "inconclusive")
        }
        pooled = next((c["status"] for c in rows_c if c["cell"] == "pooled"), "-")
        summary.append(
            [name, tally["supported"], tally["not supported"], tally["inconclusive"], pooled]
        )
    doc.table(["claim", "supported", "not supported", "inconclusive", "pooled"], summary)
    doc.table(
        ["claim", "cell", "verdict", "effect", "p", "n"],
        [
            [c["claim"], c["cell"], c["status"], _effect(c), _p(c.get("p")), _n(c)]
            for c in res["claims"]
        ],
    )
    # -- rules ----------
    a = res.get("config", {})
    doc.h(2, "How to read this report")
    mode = a.get("group_mode", "quantile")
    grp = (
        f"optimal = top {fmt(a.get('group_quantile'))} of test accuracy within the cell, "
        f"suboptimal = bottom {fmt(a.get('group_quantile'))}"
        if mode == "quantile"
        else f"optimal = within {fmt(a.get('group_delta'))} of the cell's best accuracy, "
        "suboptimal = every other run"
    )
    alpha = a.get("alpha", 0.05)
    doc.p(
        f"Groups: {grp}. Diverged runs take part in the grouping; weight analyses use the runs "
        "whose final weights are finite. Significance level alpha = "
        f"{fmt(alpha)}; a cell is inconclusive when a group has fewer than "
        f"{a.get('min_group_size', 3)} runs."
    )
    for rule in (
        "C1 distributions (JS / W1): mean pairwise Jensen-Shannon divergence (base 2) / "
        "Wasserstein-1 distance between the whole-network weight histograms (universal log "
        "grid, shared edges) within the suboptimal group vs within the optimal group; "
        "supported when larger for the suboptimal group with a one-sided permutation p < "
        "alpha (exact when the groups are small). The interval is a percentile bootstrap of the "
        "difference (runs resampled).",
        "C1 statistics dispersion: per statistic, a one-sided permutation test that the "
        "suboptimal group's values are more dispersed (mean absolute deviation from the group "
        "median, Brown-Forsythe style), Benjamini-Hochberg adjusted over the statistics; "
        "supported when more than half the statistics are significant. Pooled: per-cell "
        "p-values combined by Stouffer's method.",
        "C2 cross-cell distances: mean JS divergence between optimal runs of different cells "
        "vs between suboptimal runs of different cells; stratified permutation test (labels "
        "shuffled within each cell); supported when p < alpha and the suboptimal runs are "
        "farther apart.",
        "C2 trajectory similarity: the optimal groups' mean trajectory of the whole-network "
        "weight std (divided by its initial value, on a common training-progress grid) is "
        "compared between every pair of families by Spearman's rho; supported when every "
        "pair has rho > 0 with p < alpha.",
        "Prediction (beyond the paper): random forest on whole-network and first/last-layer "
        "statistics, K-fold out-of-fold predictions; supported when R² > 0.5 and Kendall's "
        "tau has p < alpha.",
    ):
        doc.p("- " + rule)
    # -- figures ----------
    doc.h(2, "Figures")
    if figures:
        for stem, ftitle, fn in plots.FIGURES:
            path = fig_dir / f"{stem}.png"
            if stem == "first_layer_weights":
                fn(data, res, study_dir, path)
            else:
                fn(data, res, path)
            written[stem] = path
            doc.h(3, ftitle)
            doc.img(ftitle, path, f"figures/{stem}.png")
    else:
        doc.p("(figures not drawn)")
    # -- accuracy ----------
    doc.h(2, "Accuracy per cell")
    doc.table(
        ["cell", "runs", "finite weights", "optimal", "suboptimal", "best", "median", "worst"],
        [
            [
                name,
                c["n_runs"],
                c["n_weights"],
                c["n_opt"],
                c["n_sub"],
                fmt(c["acc_best"]),
                fmt(c["acc_median"]),
                fmt(c["acc_worst"]),
            ]
            for name, c in res["cells"].items()
        ],
    )
    # -- C1 distances ----------
    doc.h(2, "C1: distances between weight distributions")
    rows = []
    for name, c in [*res["cells"].items(), ("pooled", res["pooled"])]:
        for metric in ("js", "wasserstein"):
            t = c["c1_dist"][metric]
            rows.append(
                [
                    name,
                    metric,
                    t["n_opt"],
                    t["n_sub"],
                    fmt(t["mean_opt"]),
                    fmt(t["mean_sub"]),
                    fmt(t["ratio"]),
                    f"[{fmt(t['ci_low'])}, {fmt(t['ci_high'])}]",
                    _p(t["p"]),
                ]
            )
    doc.table(
        ["cell", "metric", "n opt", "n sub", "mean opt", "mean sub", "ratio", "diff 95% CI", "p"],
        rows,
    )
    # -- C1 statistics ----------
    doc.h(2, "C1: dispersion of weight statistics")
    doc.p(
        "Across-run std and coefficient of variation (CV) of each whole-network statistic in "
        "each group; ratio = std(sub) / std(opt) with a bootstrap 95% CI; p one-sided "
        "(sub more dispersed), p adj = Benjamini-Hochberg over statistics."
    )
    for name, c in res["cells"].items():
        doc.h(3, name)
        doc.table(
            [
                "statistic",
                "std opt",
                "std sub",
                "CV opt",
                "CV sub",
                "ratio",
                "95% CI",
                "p",
                "p adj",
            ],
            [
                [
                    s,
                    fmt(d["std_opt"]),
                    fmt(d["std_sub"]),
                    fmt(d["cv_opt"]),
                    fmt(d["cv_sub"]),
                    fmt(d["ratio"]),
                    f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]",
                    _p(d["p"]),
                    _p(d.get("p_adj")),
                ]
                for s, d in c["c1_stats"].items()
            ],
        )
    doc.h(3, "pooled (Stouffer)")
    doc.table(
        ["statistic", "cells", "median ratio", "combined p", "p adj"],
        [
            [s, d["n_cells"], fmt(d["ratio"]), _p(d["p"]), _p(d.get("p_adj"))]
            for s, d in res["pooled"]["c1_stats_combined"].items()
        ],
    )
    # -- C2 ----------
    doc.h(2, "C2: across data sets and families")
    doc.table(
        [
            "comparison",
            "mean JS opt-opt",
            "mean JS sub-sub",
            "ratio",
            "pairs opt",
            "pairs sub",
            "p",
        ],
        [
            [
                k,
                fmt(t["mean_opt"]),
                fmt(t["mean_sub"]),
                fmt(t["ratio"]),
                t["n_pairs_opt"],
                t["n_pairs_sub"],
                _p(t["p"]),
            ]
            for k, t in res["c2"]["cross"].items()
        ],
    )
    trows = []
    for ds, tr in res["c2"]["trajectories"].items():
        for pair, v in tr["pairs"].items():
            trows.append([ds, pair, f"{v['n_a']} / {v['n_b']}", fmt(v["spearman"]), _p(v["p"])])
    if trows:
        doc.table(["data set", "group/families", "runs", "Spearman ρ", "p"], trows)
    else:
        doc.p("No trajectories recorded (train.track_every = 0) or too few runs.")
    # -- rank correlations ----------
    doc.h(2, "Rank correlations with test accuracy")
    doc.p(
        "Pooled over cells on within-cell ranks (Spearman ρ and Kendall τ with Fisher-z 95% "
        "CIs); the per-cell Spearman ρ follow."
    )
    doc.table(
        ["statistic", "n", "Spearman ρ", "95% CI", "p", "Kendall τ", "95% CI", "p"],
        [
            [
                s,
                r["n"],
                fmt(r["spearman"]),
                f"[{fmt(r['spearman_ci_low'])}, {fmt(r['spearman_ci_high'])}]",
                _p(r["spearman_p"]),
                fmt(r["kendall"]),
                f"[{fmt(r['kendall_ci_low'])}, {fmt(r['kendall_ci_high'])}]",
                _p(r["kendall_p"]),
            ]
            for s, r in res["pooled"]["rank_corr"].items()
        ],
    )
    names = list(res["cells"])
    doc.table(
        ["statistic", *names],
        [
            [s, *(fmt(res["cells"][n]["rank_corr"][s]["spearman"]) for n in names)]
            for s in ANALYSIS_STATS
        ],
    )
    # -- prediction ----------
    doc.h(2, "Predicting accuracy from weights")
    doc.table(
        ["cell", "runs", "out-of-fold R²", "Kendall τ", "p"],
        [
            [
                n,
                c["prediction"]["n"],
                fmt(c["prediction"]["r2"]),
                fmt(c["prediction"]["kendall"]),
                _p(c["prediction"]["kendall_p"]),
            ]
            for n, c in [*res["cells"].items(), ("pooled", res["pooled"])]
        ],
    )
    # -- node strength ----------
    doc.h(2, "Node strength by group")
    doc.p(
        "Per run: mean over layers of the layer fluctuation (std of the |w| node strengths); "
        "groups compared by a two-sided Mann-Whitney U test."
    )
    doc.table(
        ["cell", "n opt", "mean opt", "std opt", "n sub", "mean sub", "std sub", "p"],
        [
            [
                n,
                c["node_strength"]["opt"]["n"],
                fmt(c["node_strength"]["opt"]["mean"]),
                fmt(c["node_strength"]["opt"]["std"]),
                c["node_strength"]["sub"]["n"],
                fmt(c["node_strength"]["sub"]["mean"]),
                fmt(c["node_strength"]["sub"]["std"]),
                _p(c["node_strength"]["mannwhitney_p"]),
            ]
            for n, c in res["cells"].items()
        ],
    )
    # -- runs ----------
    doc.h(2, "Runs and provenance")
    doc.p(
        f"pyweightstat {prov.get('package_version', '?')}, git commit "
        f"{prov.get('git_commit') or 'unknown'}, torch {prov.get('torch', '?')}, Python "
        f"{prov.get('python', '?')}, device {prov.get('device', '?')} "
        f"({prov.get('device_name', '?')}). Every run's config, seed, metrics, history and "
        "provenance are in study.sqlite, runs.csv and stats.csv; final weights in weights/."
    )
    bad = [r for r in runs if r["status"] in ("failed", "diverged")]
    if bad:
        doc.table(
            ["run", "cell", "status", "test acc", "error"],
            [
                [
                    r["run_id"],
                    f"{r['dataset']}/{r['family']}",
                    r["status"],
                    fmt(r.get("test_acc")),
                    (r.get("error") or "").strip().splitlines()[0][:160] if r.get("error") else "",
                ]
                for r in bad
            ],
        )
    md_path, html_path = study_dir / "report.md", study_dir / "report.html"
    md_path.write_text(doc.markdown())
    html_path.write_text(doc.html(title))
    written["md"], written["html"] = md_path, html_path
    return written
