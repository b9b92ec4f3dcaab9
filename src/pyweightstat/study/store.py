"""The results store: one SQLite database (WAL mode) per study directory.

Layout of a study directory::

    <out>/study.sqlite          runs, statistics, histograms, trajectories, node strengths
    <out>/weights/<run_id>.pt   final weights (``torch.save(state_dict)``)

Writing a finished run is crash-safe: its weights are written to a temporary file and moved into
place with ``os.replace`` first, then every row of the run is inserted in **one transaction**.
Killing the process at any moment therefore leaves either the whole run or nothing of it in
the database (a weights file without a row is overwritten when the run is redone). Only the
parent process writes.

Tables (all keyed by ``run_id``):

- ``runs``: cell, config (JSON), seed, status (``done`` / ``diverged`` / ``failed``), error text,
  metrics, per-epoch history (JSON), timings, provenance (JSON), weights file;
- ``stats``: one row per parameter tensor and one for the whole network (``layer = '__total__'``),
  with the columns of :data:`STAT_FIELDS`;
- ``histograms``: the universal log histogram of each row of ``stats`` (window start ``first``
  plus zlib-compressed int64 counts);
- ``trajectories``: the tracker's columnar record as a compressed ``.npz`` blob;
- ``node_strength``: per-layer strengths (float32 blobs) and fluctuations;
- ``meta``: the study config and schema version.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "STAT_FIELDS",
    "TERMINAL_STATUSES",
    "TOTAL",
    "ResultStore",
    "StoreError",
]

DB_NAME = "study.sqlite"
SCHEMA_VERSION = 1
TOTAL = "__total__"
TERMINAL_STATUSES = ("done", "diverged", "failed")
STAT_FIELDS: tuple[str, ...] = (
    "count",
    "mean",
    "std",
    "skew",
    "kurtosis",
    "min",
    "max",
    "l1",
    "l2",
    "linf",
    "zero_frac",
    "near_zero_frac",
    "nonfinite",
    "q01",
    "q25",
    "q50",
    "q75",
    "q99",
)
RUN_METRICS: tuple[str, ...] = (
    "test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "n_params",
    "epochs_run",
)


class StoreError(RuntimeError):
    """The results database is missing, incompatible or cannot be written."""


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    family TEXT NOT NULL,
    idx INTEGER,
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed')),
    error TEXT,
    {", ".join(f"{m} REAL" for m in RUN_METRICS)},
    wall_s REAL,
    train_s REAL,
    measure_s REAL,
    samples_per_s REAL,
    started_at TEXT,
    finished_at TEXT,
    config TEXT NOT NULL,
    history TEXT,
    provenance TEXT,
    weights_path TEXT
);
CREATE TABLE IF NOT EXISTS stats (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    layer TEXT NOT NULL,
    kind TEXT NOT NULL,
    shape TEXT,
    {", ".join(f"{f} REAL" for f in STAT_FIELDS)},
    PRIMARY KEY (run_id, layer)
);
CREATE TABLE IF NOT EXISTS histograms (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    layer TEXT NOT NULL,
    mantissa_bits INTEGER NOT NULL,
    first INTEGER NOT NULL,
    n INTEGER NOT NULL,
    counts BLOB NOT NULL,
    underflow INTEGER NOT NULL,
    overflow INTEGER NOT NULL,
    nan_count INTEGER NOT NULL,
    PRIMARY KEY (run_id, layer)
);
CREATE TABLE IF NOT EXISTS trajectories (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS node_strength (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    layer TEXT NOT NULL,
    n_units INTEGER NOT NULL,
    fluctuation REAL,
    fluctuation_abs REAL,
    mean REAL,
    mean_abs REAL,
    strength BLOB,
    strength_abs BLOB,
    PRIMARY KEY (run_id, layer)
);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _f(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def pack_counts(counts: np.ndarray) -> bytes:
    """Compress an integer count array to bytes (little-endian int64, zlib)."""
    return zlib.compress(np.ascontiguousarray(counts, dtype="<i8").tobytes(), 6)


def unpack_counts(blob: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`pack_counts`.

    Parameters
    ----------
    blob : bytes
    n : int
        Expected number of counts.

    Returns
    -------
    numpy.ndarray
        int64 counts.
    """
    arr = np.frombuffer(zlib.decompress(blob), dtype="<i8").astype(np.int64)
    if arr.size != n:
        raise StoreError(f"histogram blob holds {arr.size} counts, expected {n}")
    return arr


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}/"))
        elif v is None:
            continue
        else:
            arr = np.asarray(v)
            if arr.dtype == object:
                if all(isinstance(x, Mapping) for x in v):
                    for i, x in enumerate(v):
                        out.update(_flatten(x, f"{key}/{i}/"))
                    continue
                arr = np.asarray([str(x) for x in np.ravel(arr)])
            out[key] = arr
    return out


def pack_trajectory(traj: Mapping[str, Any]) -> bytes:
    """Serialise a (nested) columnar trajectory dict as a compressed ``.npz`` blob.

    Nested dicts become ``/``-separated keys; no pickling is involved.
    """
    buf = io.BytesIO()
    np.savez_compressed(buf, **_flatten(traj))
    return buf.getvalue()


def unpack_trajectory(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_trajectory`: a flat ``{"a/b": ndarray}`` dict."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class ResultStore:
    """The results database of one study directory.

    Parameters
    ----------
    out_dir : str or Path
        The study directory (created if missing).
    fresh : bool
        Start a new database. An existing database and weights folder are moved aside into
        ``<out>/previous-<UTC timestamp>/`` (never deleted).
    must_exist : bool
        Refuse to create a database (for ``--report-only``).

    Raises
    ------
    StoreError
        When ``must_exist`` and there is no database, or the schema version differs.
    """

    def __init__(self, out_dir: str | Path, *, fresh: bool = False, must_exist: bool = False):
        self.out_dir = Path(out_dir)
        self.db_path = self.out_dir / DB_NAME
        self.weights_dir = self.out_dir / "weights"
        self.moved_aside: Path | None = None
        if must_exist and not self.db_path.exists():
            raise StoreError(f"no results database at {self.db_path}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if fresh and (self.db_path.exists() or self.weights_dir.exists()):
            self.moved_aside = self._move_aside()
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.weights_dir.glob("*.tmp-*"):
            stale.unlink()
        self._con = sqlite3.connect(self.db_path, isolation_level=None, timeout=60.0)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("PRAGMA foreign_keys=ON")
        self._con.executescript(_SCHEMA)
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.set_meta("created_at", _now())
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.db_path} has schema version {version}; this pyweightstat writes "
                f"version {SCHEMA_VERSION} (use --no-resume or another --out)"
            )

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.out_dir / f"previous-{stamp}"
        n = 1
        while dest.exists():
            dest = self.out_dir / f"previous-{stamp}-{n}"
            n += 1
        dest.mkdir()
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", "weights"):
            src = self.out_dir / name
            if src.exists():
                shutil.move(str(src), str(dest / name))
        return dest

    # -- context management --------------------------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        if self._con is not None:
            self._con.close()
            self._con = None  # type: ignore[assignment]

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """Return the JSON-decoded value of a meta key, or ``None``."""
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Set a meta key to a JSON-encodable value.

        Parameters
        ----------
        key : str
        value : JSON-encodable
        """
        self._con.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    # -- writing -------------------------------------------------------------------------------
    def terminal_run_ids(self) -> set[str]:
        """Run ids already finished (done, diverged or failed): skipped on resume."""
        rows = self._con.execute(
            "SELECT run_id FROM runs WHERE status IN ('done', 'diverged', 'failed')"
        ).fetchall()
        return {r[0] for r in rows}

    def _write_weights(self, run_id: str, payload: bytes | Mapping[str, Any]) -> str:
        final = self.weights_dir / f"{run_id}.pt"
        tmp = self.weights_dir / f"{run_id}.pt.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            if isinstance(payload, (bytes, bytearray)):
                fh.write(payload)
            else:
                import torch

                torch.save({k: v.detach().cpu() for k, v in payload.items()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return str(final.relative_to(self.out_dir))

    def commit_run(self, result: Mapping[str, Any]) -> None:
        """Store one finished run (weights file first, then all rows in one transaction).

        Parameters
        ----------
        result : mapping
            A result of :func:`pyweightstat.study.runner.execute_run`; its weights come from
            ``weights_bytes`` (a ``torch.save`` payload) or ``state_dict`` (tensors).

        Raises
        ------
        StoreError
            When the run id is already stored.
        """
        run_id = result["run_id"]
        status = result["status"]
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"result status must be one of {TERMINAL_STATUSES}, got {status!r}")
        weights_path = None
        payload = result.get("weights_bytes")
        if payload is None:
            payload = result.get("state_dict")
        if payload is not None:
            weights_path = self._write_weights(run_id, payload)
        metrics = result.get("metrics") or {}
        timings = result.get("timings") or {}
        cfg = result["config"]
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            cols = [
                "run_id",
                "dataset",
                "family",
                "idx",
                "seed",
                "status",
                "error",
                *RUN_METRICS,
                "wall_s",
                "train_s",
                "measure_s",
                "samples_per_s",
                "started_at",
                "finished_at",
                "config",
                "history",
                "provenance",
                "weights_path",
            ]
            vals = [
                run_id,
                cfg["dataset"],
                cfg["family"],
                cfg.get("index"),
                cfg["train"]["seed"],
                status,
                result.get("error"),
                *(_f(metrics.get(m)) for m in RUN_METRICS),
                _f(timings.get("wall_s")),
                _f(timings.get("train_s")),
                _f(timings.get("measure_s")),
                _f(timings.get("samples_per_s")),
                timings.get("started_at"),
                timings.get("finished_at"),
                json.dumps(cfg, sort_keys=True),
                json.dumps(result.get("history") or []),
                json.dumps(result.get("provenance") or {}, sort_keys=True),
                weights_path,
            ]
            con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                vals,
            )
            for layer in result.get("layers") or []:
                st = layer["stats"]
                con.execute(
                    f"INSERT INTO stats (run_id, layer, kind, shape, {', '.join(STAT_FIELDS)}) "
                    f"VALUES ({', '.join('?' * (4 + len(STAT_FIELDS)))})",
                    [
                        run_id,
                        layer["name"],
                        layer["kind"],
                        json.dumps(list(layer.get("shape") or [])),
                        *(_f(st.get(f)) for f in STAT_FIELDS),
                    ],
                )
                h = layer.get("hist")
                if h is not None:
                    counts = np.asarray(h["counts"], dtype=np.int64)
                    con.execute(
                        "INSERT INTO histograms (run_id, layer, mantissa_bits, first, n, counts, "
                        "underflow, overflow, nan_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            run_id,
                            layer["name"],
                            int(h["mantissa_bits"]),
                            int(h["first"]),
                            int(counts.size),
                            pack_counts(counts),
                            int(h.get("underflow", 0)),
                            int(h.get("overflow", 0)),
                            int(h.get("nan_count", 0)),
                        ],
                    )
            traj = result.get("trajectory")
            if traj:
                con.execute(
                    "INSERT INTO trajectories (run_id, data) VALUES (?, ?)",
                    (run_id, pack_trajectory(traj)),
                )
            for ns in result.get("node_strength") or []:
                s = np.asarray(ns.get("strength", []), dtype="<f4")
                sa = np.asarray(ns.get("strength_abs", []), dtype="<f4")
                con.execute(
                    "INSERT INTO node_strength (run_id, layer, n_units, fluctuation, "
                    "fluctuation_abs, mean, mean_abs, strength, strength_abs) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        ns["layer"],
                        int(ns.get("n_units", s.size)),
                        _f(ns.get("fluctuation")),
                        _f(ns.get("fluctuation_abs")),
                        _f(ns.get("mean")),
                        _f(ns.get("mean_abs")),
                        s.tobytes(),
                        sa.tobytes(),
                    ],
                )
            con.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            con.execute("ROLLBACK")
            raise StoreError(f"run {run_id} cannot be stored: {exc}") from exc
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------------------------
    def count_runs(self) -> dict[str, int]:
        """Number of stored runs per status."""
        rows = self._con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return {s: int(n) for s, n in rows}

    def load_runs(self, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Return the stored runs as dicts (config, history, provenance decoded), ordered.

        Each dict also carries ``total``: the whole-network statistics (or ``None``).

        Parameters
        ----------
        statuses : iterable of str, optional
            Keep only these statuses.
        """
        con = self._con
        cur = con.execute("SELECT * FROM runs ORDER BY dataset, family, idx, run_id")
        names = [c[0] for c in cur.description]
        wanted = None if statuses is None else set(statuses)
        runs = []
        totals = self.load_stats(layer=TOTAL)
        for row in cur.fetchall():
            r = dict(zip(names, row, strict=True))
            if wanted is not None and r["status"] not in wanted:
                continue
            for key in ("config", "history", "provenance"):
                r[key] = json.loads(r[key]) if r[key] else None
            r["total"] = totals.get(r["run_id"])
            runs.append(r)
        return runs

    def load_stats(self, layer: str | None = None) -> dict[str, Any]:
        """Return statistics rows.

        Parameters
        ----------
        layer : str, optional
            With a layer name (e.g. :data:`TOTAL`): ``{run_id: stats dict}``. Without:
            ``{run_id: [row dict, ...]}`` with every layer, in insertion order.
        """
        q = "SELECT * FROM stats"
        args: tuple[Any, ...] = ()
        if layer is not None:
            q += " WHERE layer = ?"
            args = (layer,)
        cur = self._con.execute(q + " ORDER BY rowid", args)
        names = [c[0] for c in cur.description]
        out: dict[str, Any] = {}
        for row in cur.fetchall():
            r = dict(zip(names, row, strict=True))
            r["shape"] = json.loads(r["shape"]) if r["shape"] else []
            if layer is not None:
                out[r["run_id"]] = r
            else:
                out.setdefault(r["run_id"], []).append(r)
        return out

    def load_histograms(self, layer: str = TOTAL) -> dict[str, dict[str, Any]]:
        """Return ``{run_id: {"mantissa_bits", "first", "counts", ...}}`` for one layer name."""
        cur = self._con.execute(
            "SELECT run_id, mantissa_bits, first, n, counts, underflow, overflow, nan_count "
            "FROM histograms WHERE layer = ?",
            (layer,),
        )
        out = {}
        for rid, m, first, n, blob, under, over, nan in cur.fetchall():
            out[rid] = {
                "mantissa_bits": int(m),
                "first": int(first),
                "counts": unpack_counts(blob, int(n)),
                "underflow": int(under),
                "overflow": int(over),
                "nan_count": int(nan),
            }
        return out

    def load_trajectories(self) -> dict[str, dict[str, np.ndarray]]:
        """Return ``{run_id: flat trajectory dict}`` for every run that has one."""
        cur = self._con.execute("SELECT run_id, data FROM trajectories")
        return {rid: unpack_trajectory(blob) for rid, blob in cur.fetchall()}

    def load_node_strength(self) -> dict[str, list[dict[str, Any]]]:
        """Return ``{run_id: [per-layer dict with strength arrays], ...}``."""
        cur = self._con.execute("SELECT * FROM node_strength ORDER BY rowid")
        names = [c[0] for c in cur.description]
        out: dict[str, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            r = dict(zip(names, row, strict=True))
            r["strength"] = np.frombuffer(r["strength"] or b"", dtype="<f4").astype(np.float64)
            r["strength_abs"] = np.frombuffer(r["strength_abs"] or b"", dtype="<f4").astype(
                np.float64
            )
            out.setdefault(r["run_id"], []).append(r)
        return out

    def weights_file(self, run: Mapping[str, Any]) -> Path | None:
        """Absolute path of a run's weights file, or ``None``."""
        p = run.get("weights_path")
        return None if not p else self.out_dir / p

    # -- export --------------------------------------------------------------------------------
    def export_csv(self, out_dir: str | Path | None = None) -> tuple[Path, Path]:
        """Write ``runs.csv`` (one row per run) and ``stats.csv`` (one row per run and layer).

        Returns
        -------
        (Path, Path)
            The two files.
        """
        d = Path(out_dir) if out_dir is not None else self.out_dir
        runs_csv, stats_csv = d / "runs.csv", d / "stats.csv"
        runs = self.load_runs()
        run_cols = [
            "run_id",
            "dataset",
            "family",
            "idx",
            "status",
            *RUN_METRICS,
            "wall_s",
            "optimizer",
            "lr_mult",
            "init",
            "epochs",
            "seed",
            "model",
            "error",
        ]
        with open(runs_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(run_cols)
            for r in runs:
                t = r["config"]["train"]
                w.writerow(
                    [
                        r["run_id"],
                        r["dataset"],
                        r["family"],
                        r["idx"],
                        r["status"],
                        *(r[m] for m in RUN_METRICS),
                        r["wall_s"],
                        t["optimizer"],
                        t["lr_mult"],
                        t["init"],
                        t["epochs"],
                        t["seed"],
                        json.dumps(t["model"], sort_keys=True),
                        r["error"] or "",
                    ]
                )
        stats = self.load_stats()
        with open(stats_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["run_id", "layer", "kind", "shape", *STAT_FIELDS])
            for rid, rows in stats.items():
                for s in rows:
                    w.writerow(
                        [rid, s["layer"], s["kind"], "x".join(map(str, s["shape"]))]
                        + [s[f] for f in STAT_FIELDS]
                    )
        return runs_csv, stats_csv
