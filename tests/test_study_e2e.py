"""The study end to end through ``pyweightstat-run`` on a tiny smoke-like config (real data)."""

from __future__ import annotations

import csv
import os
import sqlite3

import pytest
import torch

import pyweightstat
from pyweightstat.cli import main
from pyweightstat.study.report import REPORT_SECTIONS

pytestmark = pytest.mark.skipif(
    not os.environ.get("PYWEIGHTSTAT_DATA"), reason="PYWEIGHTSTAT_DATA is not set"
)

TINY = """
runs_per_cell = 2
[data]
train_size = 200
test_size = 200
[train]
batch_size = 50
epochs = [1]
track_every = 2
[models.dnn]
width = [8]
depth = [1, 2]
[models.cnn]
blocks = [1]
channels = [4]
[analysis]
n_permutations = 199
n_bootstrap = 99
cv_folds = 2
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    out = root / "study"
    argv = [
        "--datasets",
        "mnist",
        "--families",
        "dnn,cnn",
        "--preset",
        "smoke",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    return out, argv


def test_database_rows(study):
    out, _ = study
    con = sqlite3.connect(out / "study.sqlite")
    runs = con.execute(
        "SELECT run_id, dataset, family, status, test_acc, weights_path, provenance FROM runs"
    ).fetchall()
    assert len(runs) == 4
    assert {(r[1], r[2]) for r in runs} == {("mnist", "dnn"), ("mnist", "cnn")}
    for run_id, _, _, status, acc, wpath, prov in runs:
        assert status == "done" and 0.0 <= acc <= 1.0
        sd = torch.load(out / wpath, weights_only=True)
        n_tensors = len(sd)
        n_stats = con.execute("SELECT COUNT(*) FROM stats WHERE run_id = ?", (run_id,)).fetchone()
        assert n_stats[0] == n_tensors + 1  # every tensor plus the whole network
        n_h = con.execute("SELECT COUNT(*) FROM histograms WHERE run_id = ?", (run_id,)).fetchone()
        assert n_h[0] == n_tensors + 1
        for table in ("trajectories", "node_strength"):
            n = con.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,))
            assert n.fetchone()[0] >= 1, table
        assert '"torch"' in prov and '"package_version"' in prov and '"device"' in prov
    total = con.execute("SELECT count, std FROM stats WHERE layer = '__total__'").fetchall()
    assert all(c > 0 and s > 0 for c, s in total)
    con.close()


def test_report_and_figures(study):
    out, _ = study
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    pos = [md.index(f"## {s}") for s in REPORT_SECTIONS]
    assert pos == sorted(pos)
    assert md.index("## Claims") < md.index("## Figures")
    assert "reconstruction" in md and "abstract" in md
    assert "<table>" in html and "data:image/png;base64," in html
    figs = sorted((out / "figures").glob("*.png"))
    assert len(figs) == 8
    for f in figs:
        assert f.stat().st_size > 1000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_exports(study):
    out, _ = study
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    with open(out / "stats.csv") as fh:
        stats = list(csv.DictReader(fh))
    assert {r["layer"] for r in stats} >= {"__total__"}
    assert {r["run_id"] for r in stats} == {r["run_id"] for r in rows}


def test_report_only_reanalyses_without_training(study):
    out, _ = study
    (out / "report.md").unlink()
    before = sqlite3.connect(out / "study.sqlite").execute("SELECT COUNT(*) FROM runs").fetchone()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "report.md").exists()
    after = sqlite3.connect(out / "study.sqlite").execute("SELECT COUNT(*) FROM runs").fetchone()
    assert before == after


@pytest.mark.slow
def test_process_executor_matches_serial(tmp_path, monkeypatch):
    """Two worker processes give exactly the results of the serial executor (CPU, 1 thread)."""
    from pyweightstat.study.config import load_study_config
    from pyweightstat.study.grid import expand_grid
    from pyweightstat.study.runner import ProcessExecutor, SerialExecutor

    cfg = load_study_config(
        "smoke",
        {
            "runs_per_cell": 2,
            "datasets": ["mnist"],
            "families": ["dnn"],
            "data": {"train_size": 200, "test_size": 100},
        },
    )
    runs = expand_grid(cfg)
    threads, engine_threads = torch.get_num_threads(), pyweightstat.get_num_threads()
    torch.set_num_threads(1)
    pyweightstat.set_num_threads(1)
    try:
        serial = {r["run_id"]: r for r in SerialExecutor(device="cpu").submit(runs)}
    finally:
        torch.set_num_threads(threads)
        pyweightstat.set_num_threads(engine_threads)
    events = []
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per worker, as the serial run had
    with ProcessExecutor(2, device="cpu") as ex:
        assert ex.threads == 1
        par = {r["run_id"]: r for r in ex.submit(runs, on_event=events.append)}
    assert set(par) == set(serial) == {r["run_id"] for r in runs}
    for rid, s in serial.items():
        p = par[rid]
        assert p["status"] == s["status"] == "done", p["error"]
        assert p["metrics"] == s["metrics"]
        assert p["weights_bytes"] is not None
        for a, b in zip(p["layers"], s["layers"], strict=True):
            assert a["stats"] == b["stats"]
    assert {e["event"] for e in events} >= {"start", "epoch"}
