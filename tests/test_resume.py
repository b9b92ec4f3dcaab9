"""Resume after SIGKILL: no duplicates, and the same rows as an uninterrupted study."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyweightstat
from pyweightstat.cli import main

pytestmark = pytest.mark.skipif(
    not os.environ.get("PYWEIGHTSTAT_DATA"), reason="PYWEIGHTSTAT_DATA is not set"
)

CONFIG = """
runs_per_cell = 6
[data]
train_size = 2000
test_size = 200
[train]
batch_size = 50
epochs = [3]
track_every = 5
[models.dnn]
width = [32, 64]
depth = [1, 2]
[analysis]
n_permutations = 99
n_bootstrap = 99
cv_folds = 2
"""

#: columns that do not depend on when or how fast a run happened
_RUN_COLS = (
    "run_id, dataset, family, idx, seed, status, error, test_acc, test_loss, train_acc, "
    "train_loss, n_params, epochs_run, config, history"
)


def _cmd(out: Path, cfg: Path, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pyweightstat.cli",
        "--datasets",
        "mnist",
        "--families",
        "dnn",
        "--preset",
        "smoke",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--workers",
        str(workers),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same float results in every process
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    return env


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def _rows(db: Path) -> dict:
    con = sqlite3.connect(db)
    runs = {r[0]: r for r in con.execute(f"SELECT {_RUN_COLS} FROM runs").fetchall()}
    stats = sorted(con.execute("SELECT * FROM stats").fetchall())
    hists = sorted(con.execute("SELECT run_id, layer, first, n, counts FROM histograms"))
    con.close()
    return {"runs": runs, "stats": stats, "hists": hists}


def test_resume_after_sigkill(tmp_path, capsys):
    cfg = tmp_path / "resume.toml"
    cfg.write_text(CONFIG)
    env = _env()

    # the interrupted study: two worker processes, the whole process group killed with SIGKILL
    # as soon as one run is committed
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, cfg, workers=2),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    db = killed / "study.sqlite"
    deadline = time.monotonic() + 120
    try:
        while _count(db) < 1:
            if proc.poll() is not None:
                pytest.fail(f"study ended before it could be killed: {proc.stderr.read()!r}")
            if time.monotonic() > deadline:
                pytest.fail("no run was committed within 120 s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    n_at_kill = _count(db)
    assert 1 <= n_at_kill < 6, "the study finished before the kill; make its runs longer"
    at_kill = _rows(db)

    # resume with the same command (serial this time, in this process with one thread, as the
    # killed study's workers had) ...
    threads, engine_threads = torch.get_num_threads(), pyweightstat.get_num_threads()
    torch.set_num_threads(1)
    pyweightstat.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(_cmd(killed, cfg)[3:]) == 0
        assert f"{n_at_kill} already stored" in capsys.readouterr().err
        # ... and an uninterrupted study with the same seeds
        ref = tmp_path / "ref"
        assert main(_cmd(ref, cfg)[3:]) == 0
    finally:
        torch.set_num_threads(threads)
        pyweightstat.set_num_threads(engine_threads)

    resumed, reference = _rows(db), _rows(ref / "study.sqlite")
    assert len(resumed["runs"]) == 6  # no duplicates (and nothing missing)
    assert resumed["runs"].keys() == reference["runs"].keys()
    for rid, row in reference["runs"].items():
        assert resumed["runs"][rid] == row, rid
    assert resumed["stats"] == reference["stats"]
    assert resumed["hists"] == reference["hists"]
    # runs finished before the kill were not redone or changed
    for rid, row in at_kill["runs"].items():
        assert resumed["runs"][rid] == row
    cfgs = [json.loads(r[13]) for r in resumed["runs"].values()]
    assert len({c["run_id"] for c in cfgs}) == 6
    assert not list((killed / "weights").glob("*.tmp-*"))
