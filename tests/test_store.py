"""The SQLite results store: round trip, atomicity, resume bookkeeping, CSV export."""

from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest
import torch

from pyweightstat.study.store import STAT_FIELDS, TOTAL, ResultStore, StoreError


def _result(run_id: str = "r1", status: str = "done", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sd = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    layers = []
    for name, kind in (("fc.weight", "weight"), ("fc.bias", "bias"), (TOTAL, "total")):
        layers.append(
            {
                "name": name,
                "kind": kind,
                "shape": [3, 4],
                "stats": {f: float(rng.normal()) for f in STAT_FIELDS},
                "hist": {
                    "mantissa_bits": 7,
                    "first": int(rng.integers(0, 60000)),
                    "counts": rng.integers(0, 100, size=int(rng.integers(1, 500))),
                    "underflow": 1,
                    "overflow": 2,
                    "nan_count": 3,
                },
            }
        )
    return {
        "run_id": run_id,
        "config": {"dataset": "mnist", "family": "dnn", "index": 0, "train": {"seed": seed}},
        "status": status,
        "error": None if status != "failed" else "RuntimeError: boom",
        "metrics": {
            "test_acc": 0.5,
            "test_loss": 1.0,
            "train_acc": 0.6,
            "train_loss": 0.9,
            "n_params": 15,
            "epochs_run": 1,
        },
        "history": [{"epoch": 1, "test_acc": 0.5}],
        "timings": {"wall_s": 1.5, "train_s": 1.0, "started_at": "t0", "finished_at": "t1"},
        "provenance": {"torch": torch.__version__, "git_commit": None},
        "layers": layers,
        "trajectory": {
            "steps": np.arange(4),
            "stats": rng.normal(size=(4, 3, 2)),
            "names": ["a", "b", TOTAL],
        },
        "node_strength": [
            {
                "layer": "fc",
                "n_units": 3,
                "fluctuation": 0.1,
                "fluctuation_abs": 0.2,
                "mean": 0.0,
                "mean_abs": 1.0,
                "strength": np.arange(3.0),
                "strength_abs": np.arange(3.0) + 1,
            }
        ],
        "weights_bytes": None if status == "failed" else buf.getvalue(),
        "_sd": sd,
    }


def test_round_trip(tmp_path):
    res = _result()
    with ResultStore(tmp_path) as st:
        st.commit_run(res)
        runs = st.load_runs()
        assert len(runs) == 1
        r = runs[0]
        assert r["run_id"] == "r1" and r["status"] == "done" and r["test_acc"] == 0.5
        assert r["config"] == res["config"]
        assert r["history"] == res["history"]
        assert r["provenance"] == res["provenance"]
        assert r["total"]["kind"] == "total"
        stats = st.load_stats()["r1"]
        assert [s["layer"] for s in stats] == ["fc.weight", "fc.bias", TOTAL]
        for s, layer in zip(stats, res["layers"], strict=True):
            for f in STAT_FIELDS:
                assert s[f] == pytest.approx(layer["stats"][f], rel=0, abs=0)
        for layer in res["layers"]:
            h = st.load_histograms(layer["name"])["r1"]
            assert h["first"] == layer["hist"]["first"]
            assert np.array_equal(h["counts"], layer["hist"]["counts"])
            assert (h["underflow"], h["overflow"], h["nan_count"]) == (1, 2, 3)
        traj = st.load_trajectories()["r1"]
        np.testing.assert_array_equal(traj["stats"], res["trajectory"]["stats"])
        assert list(traj["names"]) == ["a", "b", TOTAL]
        ns = st.load_node_strength()["r1"][0]
        np.testing.assert_array_equal(ns["strength_abs"], [1.0, 2.0, 3.0])
        path = st.weights_file(r)
        loaded = torch.load(path, weights_only=True)
        for k, v in res["_sd"].items():
            assert torch.equal(loaded[k], v)
        assert st.terminal_run_ids() == {"r1"}
        mode = st._con.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"


def test_commit_is_atomic(tmp_path):
    good, bad = _result("good"), _result("bad", seed=1)
    bad["layers"][1]["name"] = None  # violates NOT NULL half-way through the transaction
    with ResultStore(tmp_path) as st:
        st.commit_run(good)
        with pytest.raises(StoreError):
            st.commit_run(bad)
        con = st._con
        for table in ("runs", "stats", "histograms", "trajectories", "node_strength"):
            n = con.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = 'bad'").fetchone()[0]
            assert n == 0, table
        assert st.terminal_run_ids() == {"good"}
        st.commit_run(_result("bad", seed=1))  # the store is still usable
        assert st.terminal_run_ids() == {"good", "bad"}
    # committed data is visible to a fresh connection (durable, not just cached)
    con = sqlite3.connect(tmp_path / "study.sqlite")
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    con.close()


def test_duplicates_are_refused_and_first_row_kept(tmp_path):
    with ResultStore(tmp_path) as st:
        st.commit_run(_result("r"))
        other = _result("r", seed=5)
        other["metrics"]["test_acc"] = 0.9
        with pytest.raises(StoreError, match="r"):
            st.commit_run(other)
        assert st.load_runs()[0]["test_acc"] == 0.5


def test_failed_run_without_weights(tmp_path):
    res = _result("f", status="failed")
    res["layers"], res["node_strength"], res["trajectory"] = [], [], None
    with ResultStore(tmp_path) as st:
        st.commit_run(res)
        r = st.load_runs()[0]
        assert r["status"] == "failed" and "boom" in r["error"]
        assert r["weights_path"] is None and r["total"] is None
        assert st.terminal_run_ids() == {"f"}
        with pytest.raises(ValueError, match="status"):
            st.commit_run({**_result("x"), "status": "running"})


def test_fresh_moves_old_results_aside(tmp_path):
    with ResultStore(tmp_path) as st:
        st.commit_run(_result("old"))
    with ResultStore(tmp_path, fresh=True) as st:
        assert st.terminal_run_ids() == set()
        aside = st.moved_aside
    assert aside is not None and aside.parent == tmp_path
    assert (aside / "study.sqlite").exists()
    assert (aside / "weights" / "old.pt").exists()
    con = sqlite3.connect(aside / "study.sqlite")
    assert con.execute("SELECT run_id FROM runs").fetchall() == [("old",)]
    con.close()


def test_must_exist_and_meta(tmp_path):
    with pytest.raises(StoreError, match="no results database"):
        ResultStore(tmp_path / "none", must_exist=True)
    with ResultStore(tmp_path) as st:
        st.set_meta("k", {"a": [1, 2]})
    with ResultStore(tmp_path, must_exist=True) as st:
        assert st.get_meta("k") == {"a": [1, 2]}
        assert st.get_meta("missing") is None


def test_csv_export(tmp_path):
    with ResultStore(tmp_path) as st:
        for i in range(3):
            res = _result(f"r{i}", seed=i)
            res["config"]["train"] = {
                "seed": i,
                "optimizer": "sgd",
                "lr_mult": 1.0,
                "init": "default",
                "epochs": 1,
                "model": {"width": 5},
            }
            st.commit_run(res)
        runs_csv, stats_csv = st.export_csv()
    with open(runs_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run_id"] for r in rows] == ["r0", "r1", "r2"]
    assert rows[0]["test_acc"] == "0.5" and rows[1]["seed"] == "1"
    with open(stats_csv) as fh:
        srows = list(csv.DictReader(fh))
    assert len(srows) == 9
    assert set(STAT_FIELDS) <= set(srows[0])
