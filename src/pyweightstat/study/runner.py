"""Running the runs: one run as a pure function of its config, and the executors.

:func:`execute_run` trains one network (:func:`pyweightstat.train.train`) and measures its
final weights with the engine (per-layer and whole-network statistics and universal log
histograms in one :func:`pyweightstat.describe_many` call, node strengths, the tracker's
trajectory). It never raises for a failing run: the result says ``status = "failed"`` with the
error text. Its result holds only JSON-able values, NumPy arrays and the weights as bytes, so it
crosses process boundaries cheaply and another engine (a cluster scheduler, say) can implement
:class:`Executor` around it.

Executors take run configs and yield results *as they complete*; only the caller writes the
results database.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import math
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "QUANTILES",
    "Executor",
    "ProcessExecutor",
    "SerialExecutor",
    "execute_run",
    "measure_state_dict",
    "provenance",
]

QUANTILES: tuple[float, ...] = (0.01, 0.25, 0.5, 0.75, 0.99)
_Q_NAMES = ("q01", "q25", "q50", "q75", "q99")

EventCallback = Callable[[dict[str, Any]], None]


# ----------------------------------------------------------------------------------------------
# provenance


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _package_version() -> str:
    try:
        import pyweightstat

        v = getattr(pyweightstat, "__version__", None)
        if v:
            return str(v)
    except ImportError:  # pragma: no cover - we are inside the package
        pass
    try:
        from importlib.metadata import version

        return version("pyweightstat")
    except Exception:
        return "unknown"


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Versions and environment recorded with every run.

    Parameters
    ----------
    device : str
        The device the run used (``cpu``, ``cuda:N``).

    Returns
    -------
    dict
        ``package_version``, ``git_commit`` (or None), ``torch``, ``numpy``, ``python``,
        ``platform``, ``device``, ``device_name``, ``torch_threads``.
    """
    import torch

    name = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        name = torch.cuda.get_device_name(idx)
    return {
        "package_version": _package_version(),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------
# data cache (one data set per process: runs are ordered by data set)

_DATA_CACHE: dict[tuple, tuple[Any, list[str]]] = {}


def _load_data(run_config: Mapping[str, Any], data_dir: str | None, device: str) -> tuple:
    from pyweightstat.data import load_dataset

    t = run_config["train"]
    key = (
        t["dataset"],
        t["train_size"],
        t["test_size"],
        run_config.get("subset_seed", 0),
        device,
        data_dir,
    )
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_dataset(
                t["dataset"],
                data_dir=data_dir,
                train_size=t["train_size"],
                test_size=t["test_size"],
                device=device,
                seed=run_config.get("subset_seed", 0),
            )
        _DATA_CACHE[key] = (data, [str(w.message) for w in caught])
    return _DATA_CACHE[key]


def clear_data_cache() -> None:
    """Forget the data set cached by this process."""
    _DATA_CACHE.clear()


# ----------------------------------------------------------------------------------------------
# measurement


def _kind(name: str, ndim: int) -> str:
    if name.endswith("bias"):
        return "bias"
    if name.endswith("weight"):
        return "weight" if ndim >= 2 else "norm"
    return "other"


def _summary_stats(s: Any, near_zero_count: int) -> dict[str, float]:
    count = int(s.count)
    qs = s.hist.quantile(np.asarray(QUANTILES)) if count else [math.nan] * len(QUANTILES)
    qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
    nonfinite = int(s.nan_count) + int(s.posinf_count) + int(s.neginf_count)
    total = count + nonfinite
    out = {
        "count": count,
        "mean": float(s.mean),
        "std": float(s.std),
        "skew": float(s.skew),
        "kurtosis": float(s.kurtosis),
        "min": float(s.min),
        "max": float(s.max),
        "l1": float(s.l1),
        "l2": float(s.l2),
        "linf": float(s.linf),
        "zero_frac": int(s.zero_count) / total if total else math.nan,
        "near_zero_frac": near_zero_count / total if total else math.nan,
        "nonfinite": nonfinite,
    }
    out.update({n: float(q) for n, q in zip(_Q_NAMES, qs, strict=True)})
    return out


def _hist_record(h: Any, mantissa_bits: int) -> dict[str, Any]:
    return {
        "mantissa_bits": mantissa_bits,
        "first": int(h.first),
        "counts": np.asarray(h.counts, dtype=np.int64).copy(),
        "underflow": int(h.underflow),
        "overflow": int(h.overflow),
        "nan_count": int(h.nan_count),
    }


def measure_state_dict(
    state_dict: Mapping[str, Any], *, mantissa_bits: int = 7, near_zero: float = 1e-3
) -> list[dict[str, Any]]:
    """Statistics and log histograms of every floating tensor of a state dict, and their total.

    One :func:`pyweightstat.describe_many` call (``total=True``) computes the per-tensor and
    whole-network summaries and universal log histograms; quantiles come from the histograms
    (relative error ``2**-mantissa_bits``); the near-zero fraction (``|w| < near_zero``) is
    counted directly.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
    mantissa_bits : int
        Resolution of the log histograms.
    near_zero : float
        Threshold of the near-zero fraction.

    Returns
    -------
    list of dict
        One dict per tensor (``name``, ``kind`` in ``weight|bias|norm|other``, ``shape``,
        ``stats``, ``hist``), then the whole network (``name = "__total__"``,
        ``kind = "total"``).
    """
    import torch

    import pyweightstat as pws

    from .store import TOTAL

    names = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        raise ValueError("state_dict has no floating-point tensors to measure")
    tensors = [state_dict[k].detach() for k in names]
    summaries, total = pws.describe_many(tensors, total=True, mantissa_bits=mantissa_bits)
    near = [int((t.abs() < near_zero).sum()) for t in tensors]
    layers = []
    for name, t, s, nz in zip(names, tensors, summaries, near, strict=True):
        layers.append(
            {
                "name": name,
                "kind": _kind(name, t.ndim),
                "shape": list(t.shape),
                "stats": _summary_stats(s, nz),
                "hist": _hist_record(s.hist, mantissa_bits),
            }
        )
    layers.append(
        {
            "name": TOTAL,
            "kind": "total",
            "shape": [sum(t.numel() for t in tensors)],
            "stats": _summary_stats(total, sum(near)),
            "hist": _hist_record(total.hist, mantissa_bits),
        }
    )
    return layers


def _node_strengths(
    family: str, model_cfg: Mapping[str, Any], data: Any, state_dict: Mapping[str, Any]
) -> list[dict[str, Any]]:
    from pyweightstat.models import build_model
    from pyweightstat.node_strength import node_strength

    model = build_model(family, data.in_shape, data.num_classes, **model_cfg)
    model.load_state_dict(state_dict)
    model.eval()
    out = []
    for name, ls in node_strength(model, tuple(data.in_shape)).items():
        s = np.asarray(ls.strength, dtype=np.float64).ravel()
        sa = np.asarray(ls.strength_abs, dtype=np.float64).ravel()
        out.append(
            {
                "layer": name,
                "n_units": int(s.size),
                "fluctuation": float(ls.fluctuation),
                "fluctuation_abs": float(ls.fluctuation_abs),
                "mean": float(np.mean(s)) if s.size else math.nan,
                "mean_abs": float(np.mean(sa)) if sa.size else math.nan,
                "strength": s.astype(np.float32),
                "strength_abs": sa.astype(np.float32),
            }
        )
    return out


def _compact_trajectory(traj: Mapping[str, Any]) -> dict[str, Any]:
    """Keep every statistic of every record, but only the whole network's histograms."""
    out = {k: v for k, v in traj.items() if not str(k).startswith("hist_") or k == "hist_every"}
    names = list(traj.get("names", []))
    if "hist_tensor" in traj and names:
        total = len(names) - 1
        keep = np.asarray(traj["hist_tensor"]) == total
        for key in ("hist_record", "hist_bucket", "hist_count"):
            if key in traj:
                out[key] = np.asarray(traj[key])[keep]
        if "hist_flows" in traj:
            out["hist_flows"] = np.asarray(traj["hist_flows"])[:, total]
    return out


def _jsonable_history(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for h in history:
        out.append(
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in h.items()
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# one run


def execute_run(
    run_config: Mapping[str, Any],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train and measure one run; a pure function of its config (plus the data files).

    Parameters
    ----------
    run_config : mapping
        A run config from :func:`pyweightstat.study.grid.expand_grid`; an optional ``device``
        entry (``cpu``, ``cuda``, ``cuda:N``; default ``cpu``) says where to train.
    data_dir : path, optional
        Root data directory searched first (see :func:`pyweightstat.data.load_dataset`).
    on_epoch : callable, optional
        Forwarded to :func:`pyweightstat.train.train` (``on_epoch(epoch, metrics)``).

    Returns
    -------
    dict
        ``run_id``, ``config``, ``status`` (``done`` / ``diverged`` / ``failed``), ``error``,
        ``metrics``, ``history``, ``timings``, ``provenance``, ``layers`` (see
        :func:`measure_state_dict`), ``trajectory``, ``node_strength`` and ``weights_bytes``
        (the final ``state_dict`` serialised by ``torch.save``). JSON-able values, NumPy
        arrays and bytes only.
    """
    import torch

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    device = str(run_config.get("device", "cpu"))
    cfg = {k: v for k, v in run_config.items() if k != "device"}
    result: dict[str, Any] = {
        "run_id": run_config["run_id"],
        "config": cfg,
        "status": "failed",
        "error": None,
        "metrics": {},
        "history": [],
        "timings": {"started_at": started},
        "provenance": {},
        "layers": [],
        "trajectory": None,
        "node_strength": [],
        "weights_bytes": None,
    }
    try:
        from pyweightstat.train import TrainConfig, train

        result["provenance"] = provenance(device)
        data, data_warnings = _load_data(
            run_config, None if data_dir is None else str(data_dir), device
        )
        result["provenance"].update(
            {
                "data_canonical": bool(getattr(data, "canonical", True)),
                "data_source": str(getattr(data, "source", "")),
                "data_warnings": data_warnings,
            }
        )
        tcfg = TrainConfig.from_dict({**run_config["train"], "device": device})
        tr = train(tcfg, data=data, on_epoch=on_epoch)
        t_train = time.perf_counter()
        measure = run_config.get("measure", {})
        layers = measure_state_dict(
            tr.state_dict,
            mantissa_bits=int(measure.get("mantissa_bits", 7)),
            near_zero=float(measure.get("near_zero", 1e-3)),
        )
        ns: list[dict[str, Any]] = []
        if measure.get("node_strength", True):
            ns = _node_strengths(
                run_config["family"], run_config["train"]["model"], data, tr.state_dict
            )
        traj = _compact_trajectory(tr.tracker.trajectory()) if tr.tracker is not None else None
        buf = io.BytesIO()
        torch.save(tr.state_dict, buf)
        result.update(
            {
                "status": tr.status,
                "metrics": {
                    "test_acc": tr.test_acc,
                    "test_loss": tr.test_loss,
                    "train_acc": tr.train_acc,
                    "train_loss": tr.train_loss,
                    "n_params": tr.n_params,
                    "epochs_run": len(tr.history),
                    "steps": tr.steps,
                },
                "history": _jsonable_history(tr.history),
                "layers": layers,
                "trajectory": traj,
                "node_strength": ns,
                "weights_bytes": buf.getvalue(),
            }
        )
        result["timings"].update(
            {
                "train_s": tr.wall_s,
                "measure_s": time.perf_counter() - t_train,
                "samples_per_s": tr.samples_per_s,
            }
        )
    except Exception as exc:  # a failing run is recorded, never fatal to the study
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        result["status"] = "failed"
        result["error"] = f"{type(exc).__name__}: {exc}\n" + "".join(tb[-6:])
        result["layers"], result["node_strength"], result["trajectory"] = [], [], None
        result["weights_bytes"] = None
    result["timings"]["wall_s"] = time.perf_counter() - t0
    result["timings"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


# ----------------------------------------------------------------------------------------------
# executors


class Executor(ABC):
    """Runs run configs and yields their results as they complete.

    Implementations must call :func:`execute_run` (or something equivalent) for every config
    and yield exactly one result per config, in any order. ``on_event`` receives progress
    events: ``{"run_id", "event": "start"}`` and
    ``{"run_id", "event": "epoch", "epoch", "metrics"}``.
    """

    @abstractmethod
    def submit(
        self, run_configs: Sequence[Mapping[str, Any]], on_event: EventCallback | None = None
    ) -> Iterator[dict[str, Any]]:
        """Execute ``run_configs``; yield results as they complete.

        Parameters
        ----------
        run_configs : sequence of dict
            Run configs from :func:`~pyweightstat.study.grid.expand_grid`.
        on_event : callable, optional
            Receives progress events (see the class docstring).

        Yields
        ------
        dict
            One :func:`execute_run` result per config.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (nothing by default)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class SerialExecutor(Executor):
    """Runs one run after the other in this process.

    Parameters
    ----------
    data_dir : path, optional
        Root data directory searched first.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, device: str = "cpu"):
        self.data_dir = None if data_dir is None else str(data_dir)
        self.device = _resolve_device(device)

    def submit(
        self, run_configs: Sequence[Mapping[str, Any]], on_event: EventCallback | None = None
    ) -> Iterator[dict[str, Any]]:
        """Execute the runs in order; yield each result when it is done (see
        :meth:`Executor.submit`)."""
        for rc in run_configs:
            rid = rc["run_id"]
            if on_event is not None:
                on_event({"run_id": rid, "event": "start"})

            def cb(epoch: int, metrics: dict[str, float], _rid: str = rid) -> None:
                if on_event is not None:
                    on_event({"run_id": _rid, "event": "epoch", "epoch": epoch, "metrics": metrics})

            yield execute_run({**rc, "device": self.device}, self.data_dir, on_epoch=cb)


# -- process pool ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {"device": None, "events": None}


def _worker_init(threads: int, events: Any, devices: Any) -> None:
    import torch

    import pyweightstat

    torch.set_num_threads(threads)
    pyweightstat.set_num_threads(threads)
    _WORKER["events"] = events
    if devices is not None:
        try:
            _WORKER["device"] = devices.get(timeout=10)
        except queue.Empty:
            _WORKER["device"] = None


def _worker_run(run_config: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    rc = dict(run_config)
    if _WORKER["device"] is not None:
        rc["device"] = _WORKER["device"]
    events = _WORKER["events"]
    rid = rc["run_id"]

    def emit(ev: dict[str, Any]) -> None:
        if events is not None:
            try:
                events.put_nowait(ev)
            except Exception:  # progress is best effort
                pass

    emit({"run_id": rid, "event": "start"})

    def cb(epoch: int, metrics: dict[str, float]) -> None:
        emit({"run_id": rid, "event": "epoch", "epoch": epoch, "metrics": dict(metrics)})

    return execute_run(rc, data_dir, on_epoch=cb)


class ProcessExecutor(Executor):
    """Runs runs in ``workers`` processes (``spawn`` start method).

    On the CPU each worker uses ``max(1, cores // workers)`` torch and engine threads (at most
    ``$OMP_NUM_THREADS`` when that is set). With ``cuda`` and
    several visible GPUs, each worker is pinned to one GPU (round robin).

    Parameters
    ----------
    workers : int
        Number of worker processes (>= 1).
    data_dir : path, optional
        Root data directory searched first.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(
        self,
        workers: int,
        data_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        import torch

        self.workers = workers
        self.data_dir = None if data_dir is None else str(data_dir)
        self.device = _resolve_device(device)
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) > 0:  # an explicit thread limit is respected
            self.threads = min(self.threads, int(omp))
        ctx = mp.get_context("spawn")
        self._events = ctx.Queue()
        devices = None
        if self.device == "cuda" and torch.cuda.device_count() > 1:
            devices = ctx.Queue()
            n = torch.cuda.device_count()
            for i in range(workers):
                devices.put(f"cuda:{i % n}")
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self.threads, self._events, devices),
        )

    def _drain(self, on_event: EventCallback | None) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            if on_event is not None:
                on_event(ev)

    def submit(
        self, run_configs: Sequence[Mapping[str, Any]], on_event: EventCallback | None = None
    ) -> Iterator[dict[str, Any]]:
        """Submit every run to the pool; yield results in completion order (see
        :meth:`Executor.submit`).

        Raises
        ------
        RuntimeError
            When a worker process died (e.g. killed by the OS); runs in flight are lost and
            can be redone by resuming.
        """
        futures = {
            self._pool.submit(_worker_run, {**rc, "device": self.device}, self.data_dir): rc
            for rc in run_configs
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                self._drain(on_event)
                for fut in done:
                    try:
                        yield fut.result()
                    except cf.process.BrokenProcessPool as exc:
                        raise RuntimeError(f"a worker process died: {exc}") from exc
            self._drain(on_event)
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        """Shut the pool down (cancelling runs not started)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._events.close()
        self._events.join_thread()
