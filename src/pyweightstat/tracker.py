"""Per-step weight statistics of a model during training (:class:`WeightTracker`).

Every ``every`` optimisation steps the tracker makes *one* engine call,
``pyweightstat.describe_many(params, total=True, mantissa_bits=m)``, which returns a
:class:`~pyweightstat.Summary` (moments, extrema, norms, NaN/Inf/zero counts and a universal
log-linear histogram) for every parameter tensor of the model and for all of them together.

Storage is columnar and compact:

* ``steps`` ``(T,)`` int64: the optimisation step of each record;
* ``stats`` ``(T, P + 1, S)`` float64: the fields :data:`STAT_FIELDS` of the ``P`` parameter
  tensors (in ``model.named_parameters()`` order, weights and biases separately) and of the
  whole model (last row, named :data:`TOTAL_NAME`);
* histograms, sparsely, as four int64 columns ``hist_record``, ``hist_tensor``, ``hist_bucket``
  (global index on the universal grid of docs/architecture.md) and ``hist_count``, holding the
  non-empty buckets only.  Because the grid is universal, histograms of different steps,
  tensors and runs compare bucket by bucket without re-binning.  With ``hist_every=k`` only
  every k-th record has histograms (``has_hist`` says which); the moments are kept at every
  record.  Histograms are most of a record's device time and storage, so ``k > 1`` makes
  per-step tracking of large models cheaper.

On a CUDA model the tracker builds a launch plan once (the parameters are validated and laid
out a single time) and each record only enqueues one fused pass over all parameters and their
total on the current stream; the raw results stay on the device.  A record is copied to the
columnar store once three newer records exist (its device work finished long before, so the copy
waits for nothing and the work is spread over the steps), and all pending records are copied in
one bulk transfer when :meth:`WeightTracker.trajectory`, :meth:`~WeightTracker.histogram`,
:meth:`~WeightTracker.save` or :meth:`~WeightTracker.to_tensorboard` is called.  Copies wait for
the records' own device work only (an event per record), never for training work queued after
them.  The plan follows the parameter objects found at the first record: if a parameter's
storage moves (e.g. ``p.data = ...`` or ``model.to(...)``) the plan is rebuilt; replacing
parameter objects (e.g. assigning a new submodule) is detected within 64 records and at every
bulk copy, which then raise.  On the CPU each record is one engine call that returns the
store's columns (states, the total, the non-empty buckets) and is stored at once: no Summary or
Histogram objects, whose Python work was most of a record's host time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .stats.histogram import from_core
from .stats.summary import FIELDS

__all__ = ["STAT_FIELDS", "TOTAL_NAME", "WeightTracker"]

#: Order of the statistics along the last axis of ``trajectory()["stats"]`` (= Summary's FIELDS).
STAT_FIELDS: tuple[str, ...] = FIELDS

#: Name of the whole-model entry (last in ``names``).
TOTAL_NAME = "__total__"

#: Histogram counters kept per (record, tensor) besides the buckets.
_FLOW_FIELDS = ("underflow", "overflow", "nan_count")
_FORMAT_VERSION = 2  # 2: has_hist and hist_every (version 1 files: histograms at every record)
_MAX_MANTISSA_BITS = 10
# CUDA models: a record is converted to the store once this many newer records exist ...
_CONVERT_LAG = 3
# ... in batches of up to this many records (one bulk copy, one store update: the fixed host
# cost of a conversion is shared), holding at most about _CONVERT_BATCH_BYTES of device results.
_CONVERT_BATCH = 16
_CONVERT_BATCH_BYTES = 64 << 20
# CUDA models, background conversion: at most this many batches wait or run on the tracker's
# thread; record() waits for the oldest beyond that (the host could not keep up).
_MAX_JOBS = 2
# CUDA models: check this often (in records) that the model still has the plan's parameter objects.
_IDENTITY_CHECK_EVERY = 64


def _convert_batch(plan: Any) -> int:
    """How many records of ``plan`` the tracker converts at once (1 to ``_CONVERT_BATCH``)."""
    return max(1, min(_CONVERT_BATCH, _CONVERT_BATCH_BYTES // max(1, plan.result_bytes)))


def _check_int(value: object, arg: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{arg} must be {bound}, got {value}")
    return value


def _payload_has_hist(payload: Any) -> bool:
    """Whether a pending record (raw device result, host record or list of Summaries) has
    histograms."""
    if isinstance(payload, _RawRecord):
        return payload.plan.mantissa_bits is not None
    if isinstance(payload, _HostRecord):
        return payload.has_hist
    return payload[-1].hist is not None


class _RawRecord:
    """One pending CUDA record: the plan that launched it and its device result."""

    __slots__ = ("plan", "result")

    def __init__(self, plan: Any, result: Any) -> None:
        self.plan = plan
        self.result = result


class _HostRecord:
    """One CPU record in the store's columns already: raw states of the ``P`` tensors and their
    total (``f`` (P + 1, 8), ``n`` (P + 1, 5)), the non-empty log buckets (``nnz`` (P + 1,),
    ``buckets`` and ``counts`` in slot order) and the flow counters (``flows`` (P + 1, 3))."""

    __slots__ = ("buckets", "counts", "f", "flows", "has_hist", "n", "nnz")

    def __init__(
        self, f: Any, n: Any, nnz: Any, buckets: Any, counts: Any, flows: Any, *, has_hist: bool
    ) -> None:
        self.f, self.n, self.nnz = f, n, nnz
        self.buckets, self.counts, self.flows = buckets, counts, flows
        self.has_hist = has_hist


_HOST_KEY = object()  # the run key of host records


def _host_record(tensors: list[Any], names: list[str], mantissa_bits: int | None) -> Any:
    """The record of CPU ``tensors`` (None if one is not a CPU float tensor): one engine call that
    returns the store's columns, the total included.  Equal, column for column, to converting
    ``describe_many(tensors, total=True, mantissa_bits=mantissa_bits)`` (the total state is the
    same left fold of the states, its histogram the sum of theirs)."""
    from . import _C
    from .stats._input import cpu_tensor_capsules

    caps = cpu_tensor_capsules(tensors)
    if caps is None:
        return None
    columns = _C.describe_cpu_record(caps, names, -1 if mantissa_bits is None else mantissa_bits)
    return _HostRecord(*columns, has_hist=mantissa_bits is not None)


def _module_structure(modules: list[Any]) -> list[tuple[Any, ...]]:
    """What ``named_parameters()`` depends on in each of ``modules``: the names and objects of
    its parameter and submodule slots (objects by identity: the snapshot keeps them alive, so
    an id cannot be reused)."""
    return [
        (
            tuple(m._parameters),
            tuple(map(id, m._parameters.values())),
            tuple(m._modules),
            tuple(map(id, m._modules.values())),
        )
        for m in modules
    ]


def _params_snapshot(model: nn.Module, params: list[Any]) -> Any:
    """``(modules, structure, params)`` that lets ``_current_params`` skip the walk of
    ``named_parameters()`` (about 10 us per module) while no slot changes, or None when the
    model does not list its parameters the standard way (e.g. it overrides
    ``named_parameters``): the snapshot is used only if it gives the walk's list exactly."""
    modules = [m for _, m in model.named_modules()]
    seen: set[int] = set()
    derived = []
    for m in modules:  # named_parameters()'s own order and deduplication
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                derived.append(p)
    if len(derived) != len(params) or any(a is not b for a, b in zip(derived, params, strict=True)):
        return None
    return modules, _module_structure(modules), list(params)


def _run_key(payload: Any) -> Any:
    """Records with the same key convert together (the plan of raw results; one key for host
    records; None: Summaries)."""
    if isinstance(payload, _RawRecord):
        return payload.plan
    return _HOST_KEY if isinstance(payload, _HostRecord) else None


class _Job:
    """Records handed to the background thread; it removes each run once stored (which also
    frees their device results), so ``records`` is always what is left to store."""

    __slots__ = ("records",)

    def __init__(self, records: list[tuple[int, Any]]) -> None:
        self.records = records


def _run_length(records: list[tuple[int, Any]], start: int, stop: int) -> int:
    """Length of the run of records from ``start`` (before ``stop``) that convert together."""
    key = _run_key(records[start][1])
    end = start + 1
    while end < stop and _run_key(records[end][1]) is key:
        end += 1
    return end - start


class _Column:
    """A growing numpy array along axis 0 (amortised O(1) appends).

    A block may also be a function that computes it: it is called on the first read after it
    was appended (the tracker defers the CUDA statistics out of the training loop this way), and
    arrays appended after a pending function wait with it, so the order is kept.  Consecutive
    deferred blocks that are ``functools.partial`` objects of one function over arrays are
    computed in one call on their concatenated arguments (the function must work row-wise).
    """

    def __init__(self, dtype: Any, tail: tuple[int, ...] = ()) -> None:
        self._data = np.empty((16, *tail), dtype=dtype)
        self._filled = 0  # rows of _data in use
        self._pending: list[tuple[Any, int]] = []  # (array or function, rows) not yet in _data
        self.n = 0  # rows in all, pending blocks included

    def extend(self, values: Any, rows: int | None = None) -> None:
        """Append rows: an array, or a function returning ``rows`` rows (computed on read)."""
        if callable(values):
            if rows is None:
                raise ValueError("a deferred block needs its number of rows")
            self._pending.append((values, rows))
            self.n += rows
            return
        values = np.asarray(values, dtype=self._data.dtype)
        if values.shape[1:] != self._data.shape[1:]:
            raise ValueError(f"expected rows of shape {self._data.shape[1:]}, got {values.shape}")
        self.n += len(values)
        if self._pending:
            self._pending.append((values, len(values)))
        else:  # copied at once: the caller's buffer is freed and reused (fresh memory is slow)
            self._put(values)

    def _put(self, values: np.ndarray) -> None:
        need = self._filled + len(values)
        if need > len(self._data):
            grown = np.empty(
                (max(need, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype
            )
            grown[: self._filled] = self._data[: self._filled]
            self._data = grown
        self._data[self._filled : need] = values
        self._filled = need

    @property
    def values(self) -> np.ndarray:
        done = 0
        try:
            while done < len(self._pending):
                block, rows = self._pending[done]
                if not callable(block):
                    self._put(block)
                    done += 1
                    continue
                # A run of deferred blocks of one function over arrays (e.g. the statistics of
                # consecutive records) is computed in one call on the concatenated arguments.
                run = self._batchable_run(done)
                if len(run) > 1:
                    f = run[0][0].func
                    args = zip(*(b.args for b, _ in run), strict=True)
                    block = f(*(np.concatenate(a) for a in args))
                    rows = sum(r for _, r in run)
                else:
                    block = block()
                block = np.asarray(block, dtype=self._data.dtype)
                if block.shape != (rows, *self._data.shape[1:]):
                    raise ValueError(f"a deferred block gave shape {block.shape}")
                self._put(block)
                done += len(run)
        finally:  # a failing block stays pending; the ones before it are not kept twice
            del self._pending[:done]
        return self._data[: self.n]

    def _batchable_run(self, start: int) -> list[tuple[Any, int]]:
        """The pending blocks from ``start`` that are partials of one function over arrays."""
        first = self._pending[start][0]
        if not isinstance(first, partial) or first.keywords:
            return [self._pending[start]]
        run = [self._pending[start]]
        for block, rows in self._pending[start + 1 :]:
            if not (
                isinstance(block, partial)
                and block.func is first.func
                and not block.keywords
                and len(block.args) == len(first.args)
            ):
                break
            run.append((block, rows))
        if not all(isinstance(a, np.ndarray) for b, _ in run for a in b.args):
            return [self._pending[start]]
        return run


class WeightTracker:
    """Record weight statistics and log histograms of every parameter tensor during training.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained.  Its parameters are read (never modified) at each record.
    every : int
        Record after every ``every``-th call of :meth:`step` (``every=1``: every step).
    mantissa_bits : int
        Mantissa bits ``m`` of the universal log histograms (0..10); bucket widths are
        ``2**-m`` of the magnitude.
    max_pending : int
        Device models only: convert the deferred device results to host arrays at the latest
        once this many records are pending (bounds the device memory they hold). With a launch
        plan (CUDA tensors) a record is converted once 3 newer records exist (its work finished
        long ago, so this does not wait for the device), in batches of up to 16 records that
        hold at most about 64 MiB of device memory, to share the fixed host cost of a copy.
        Records being converted in the background count as pending: with the defaults, at most
        3 + 16 + 2 batches of 16 = 51 records, so ``max_pending`` matters below that (a full
        conversion on the training thread once reached).
    lazy : bool, optional
        Defer conversion as on a device (``None``: only when the parameters are not on the CPU).
    hist_every : int
        Keep the log histograms at every ``hist_every``-th record only (records 0, k, 2k, ...;
        :meth:`record` can force or skip them); the moments are kept at every record.  The
        histograms were most of the cost of a record (on an H100, ViT-B/16, measured before the
        log-histogram kernel was reworked: 0.35 ms per record with them, 0.14 ms without).
    background : bool
        CUDA models: convert the finished device records on a background thread (the copies,
        the bucket scan and the store's growth then leave the training loop's thread; the
        C++ part runs without the GIL).  ``False`` converts them in :meth:`record` itself.  An
        error of a background conversion is raised by the next :meth:`record` or read, and the
        records it could not convert stay pending.

    Notes
    -----
    Steps are counted by :meth:`step`: the first call is step 1.  Call :meth:`record` before
    training to also keep the initial weights (step 0).  Parameter names come from
    ``model.named_parameters()``; the whole model is the last entry, :data:`TOTAL_NAME`.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        mantissa_bits: int = 3,
        *,
        max_pending: int = 256,
        lazy: bool | None = None,
        hist_every: int = 1,
        background: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.every = _check_int(every, "every", 1)
        self.mantissa_bits = _check_int(mantissa_bits, "mantissa_bits", 0, _MAX_MANTISSA_BITS)
        self.max_pending = _check_int(max_pending, "max_pending", 1)
        self.hist_every = _check_int(hist_every, "hist_every", 1)
        if lazy is not None and not isinstance(lazy, bool):
            raise TypeError(f"lazy must be a bool or None, got {type(lazy).__name__}")
        if not isinstance(background, bool):
            raise TypeError(f"background must be a bool, got {type(background).__name__}")
        self.background = background
        names = [name for name, _ in model.named_parameters()]
        if not names:
            raise ValueError("model has no parameters to track")
        if TOTAL_NAME in names:
            raise ValueError(f"a parameter is named {TOTAL_NAME!r}, which the tracker reserves")
        self._model: nn.Module | None = model
        self._lazy = lazy
        # CUDA models: stats._cuda.Plan over self._plan_params, with log histograms (key True)
        # and moments only (False), built when first needed.
        self._plans: dict[bool, Any] = {}
        self._plan_params: list[Any] = []
        self._plan_failed = False
        self._since_check = 0  # records since the plan's parameter objects were checked
        self._params_snapshot: Any = None  # lets _current_params skip the module walk
        self.names: list[str] = [*names, TOTAL_NAME]
        self.num_steps = 0
        self._init_store()

    def _init_store(self) -> None:
        width = len(self.names)
        self._pending: list[tuple[int, Any]] = []  # (step, list of Summaries or _RawRecord)
        # Background conversion (CUDA plans): batches taken from _pending, oldest first. While
        # any is outstanding only that thread touches the store; everything else calls _drain().
        self._jobs: list[tuple[Future[None], _Job]] = []
        self._job_failed = False  # set by the thread: later batches are left for _drain()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0  # the process that started the thread (a fork does not have it)
        self._num_records = 0  # records taken (stored, being converted or pending)
        self._steps = _Column(np.int64)
        self._has_hist = _Column(np.bool_)
        self._stats = _Column(np.float64, (width, len(STAT_FIELDS)))
        # Non-empty buckets (bucket, count), ordered by record, tensor, bucket; _nnz[r, t] of them
        # belong to record r, tensor t (the record/tensor columns are expanded on read).
        self._hist = {key: _Column(np.int64) for key in ("bucket", "count")}
        self._nnz = _Column(np.int64, (width,))
        self._flows = _Column(np.int64, (width, len(_FLOW_FIELDS)))
        self._offsets: np.ndarray | None = None  # cumulative _nnz (flat), built on read

    # ------------------------------------------------------------------ recording
    @property
    def model(self) -> nn.Module | None:
        """The tracked model (``None`` for a tracker restored by :meth:`load`)."""
        return self._model

    @property
    def num_records(self) -> int:
        """Number of records taken so far (pending device records included)."""
        return self._num_records

    def step(self) -> bool:
        """Count one optimisation step; record if it is a multiple of ``every``.

        Returns
        -------
        bool
            Whether a record was taken.
        """
        self.num_steps += 1
        if self.num_steps % self.every == 0:
            self.record()
            return True
        return False

    def record(self, hist: bool | None = None) -> None:
        """Record the current weights now, labelled with the current step count.

        Parameters
        ----------
        hist : bool, optional
            Keep the log histograms of this record (``None``: when the record's index is a
            multiple of ``hist_every``).  E.g. ``record(hist=True)`` after training keeps the
            final histograms whatever the schedule.
        """
        if self._model is None:
            raise RuntimeError("this tracker was loaded from a file and has no model to record")
        if hist is not None and not isinstance(hist, bool):
            raise TypeError(f"hist must be a bool or None, got {type(hist).__name__}")
        with_hist = hist if hist is not None else self.num_records % self.hist_every == 0
        plan = self._plans.get(with_hist)
        # The plans in _plans were all built over the same storage: checking one checks all
        # (also before building the other kind over _plan_params).
        probe = plan if plan is not None else next(iter(self._plans.values()), None)
        if probe is not None and not probe.matches(self._plan_params):
            self._plans = {}  # storage moved: pending records keep the old plans until copied
            plan = None
        params = None
        if plan is None and not self._plan_failed:
            if not self._plans:  # no plan yet: follow the current parameters if they are on CUDA
                params = self._current_params()
                if params[0].device.type == "cuda":
                    self._plan_params, self._since_check = params, 0
            if self._plans or params is self._plan_params:
                plan = self._add_plan(with_hist)
        if plan is not None:
            # Hot path on CUDA: one enqueue, no per-tensor Python work, no synchronisation.
            self._pending.append((self.num_steps, _RawRecord(plan, plan.launch())))
            self._num_records += 1
            self._since_check += 1
            if self._jobs and self._jobs[0][0].done():
                self._reap()
            in_flight = sum(len(job.records) for _, job in self._jobs)
            if self._lazy is False or len(self._pending) + in_flight >= self.max_pending:
                self._flush()
            elif len(self._pending) >= _CONVERT_LAG + _convert_batch(plan):
                # Records this old finished on the device long ago: converting them waits for
                # nothing, and a batch at a time shares the fixed host cost of a conversion.
                if self._since_check >= _IDENTITY_CHECK_EVERY:
                    self._check_plan_params()
                count = len(self._pending) - _CONVERT_LAG
                if not (self.background and self._submit_oldest(count)):
                    self._convert_oldest(count)
            return
        from pyweightstat import describe_many

        params = params if params is not None else self._current_params()
        detached = [p.detach() for p in params]
        mbits = self.mantissa_bits if with_hist else None
        payload = (
            _host_record(detached, self.names[:-1], mbits)
            if params[0].device.type == "cpu"
            else None
        )
        if payload is None:  # other devices, or mixed ones (describe_many says what is wrong)
            summaries, total = describe_many(detached, total=True, mantissa_bits=mbits)
            payload = [*summaries, total]
        self._pending.append((self.num_steps, payload))
        self._num_records += 1
        lazy = self._lazy if self._lazy is not None else params[0].device.type != "cpu"
        if not lazy or len(self._pending) >= self.max_pending:
            self._flush()

    def _add_plan(self, with_hist: bool) -> Any:
        """Build the plan of one kind over ``_plan_params`` (None if the inputs do not allow one,
        e.g. mixed devices: the general path then reports or handles them)."""
        from .stats import _cuda

        try:
            plan = _cuda.Plan(
                self._plan_params, self.mantissa_bits if with_hist else None, self.names[:-1]
            )
        except (TypeError, ValueError):
            self._plans, self._plan_failed = {}, True
            return None
        self._plans[with_hist] = plan
        return plan

    def _current_params(self) -> list[Any]:
        """The model's parameters, checked against the names found at creation."""
        assert self._model is not None
        snap = self._params_snapshot
        if snap is not None and _module_structure(snap[0]) == snap[1]:
            return list(snap[2])  # no module or parameter slot changed since the last walk
        params = []
        for i, (name, p) in enumerate(self._model.named_parameters()):
            if i >= len(self.names) - 1 or name != self.names[i]:
                raise RuntimeError(
                    f"the model's parameters changed since the tracker was created ({name!r})"
                )
            params.append(p)
        if len(params) != len(self.names) - 1:
            raise RuntimeError("the model's parameters changed since the tracker was created")
        self._params_snapshot = _params_snapshot(self._model, params)
        return params

    def _flush(self) -> None:
        """Convert pending records into the columnar store (reads device values once)."""
        self._drain()
        if not self._pending:
            return
        if self._plans:
            self._check_plan_params()
        self._convert_oldest(len(self._pending))

    def _convert_oldest(self, count: int) -> None:
        """Move the ``count`` oldest pending records into the store (after the background ones).

        Consecutive records of one kind go together: raw results of one plan (one bulk fetch)
        or lists of Summaries. A run leaves the queue only once it is converted.
        """
        self._drain()
        while count > 0 and self._pending:
            stop = _run_length(self._pending, 0, min(count, len(self._pending)))
            run = self._pending[:stop]
            converted = self._convert_run(run)
            del self._pending[:stop]
            self._store(run, converted)
            count -= stop

    def _convert_run(self, run: list[tuple[int, Any]]) -> tuple[Any, ...]:
        if isinstance(run[0][1], _RawRecord):
            return self._convert_raw(run)
        if isinstance(run[0][1], _HostRecord):
            return self._convert_host(run)
        return self._convert_summaries(run)

    @staticmethod
    def _convert_host(run: list[tuple[int, Any]]) -> tuple[Any, ...]:
        from .stats.summary import fields_from_states

        recs = [rec for _, rec in run]
        f = np.stack([r.f for r in recs])
        n = np.stack([r.n for r in recs])
        # statistics computed from the raw states on read, as for CUDA records
        return (
            partial(fields_from_states, f, n),
            np.stack([r.nnz for r in recs]),
            np.concatenate([r.buckets for r in recs]),
            np.concatenate([r.counts for r in recs]),
            np.stack([r.flows for r in recs]),
        )

    # ------------------------------------------------------------------ background conversion
    def _submit_oldest(self, count: int) -> bool:
        """Hand the ``count`` oldest pending records to the background thread (in order).

        Returns False, leaving them pending, where no thread can take them (the interpreter is
        shutting down): the caller then converts them itself.
        """
        self._check_fork()
        if len(self._jobs) >= _MAX_JOBS:
            self._jobs[0][0].exception()  # the host is behind: wait for the oldest batch
            self._reap()
        if self._executor is None:
            # fetch_many, which it calls, also works while the training thread captures a CUDA
            # graph (it leaves other threads' captures alone: cudaStreamCaptureModeThreadLocal)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="pyweightstat-tracker")
            self._executor_pid = os.getpid()
        job = _Job(self._pending[:count])
        try:
            future = self._executor.submit(self._run_job, job)
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            return False
        del self._pending[:count]
        self._jobs.append((future, job))
        return True

    def _check_fork(self) -> None:
        """In a process forked from the one that started the thread: the thread and its
        unfinished batches did not come along, so their records go back to the pending ones."""
        if self._executor is None or self._executor_pid == os.getpid():
            return
        self._requeue(self._jobs)
        self._jobs, self._executor, self._job_failed = [], None, False

    def _requeue(self, jobs: list[tuple[Future[None], _Job]]) -> None:
        """Put what ``jobs`` did not store back in front of the pending records, in order (a
        finished batch has nothing left; a failed one keeps its failed run and those after)."""
        self._pending[:0] = [record for _, job in jobs for record in job.records]

    def _run_job(self, job: _Job) -> None:
        """On the background thread: convert and store ``job``'s records, run by run."""
        if self._job_failed:  # an earlier batch failed: leave this one to _drain()
            return
        try:
            records = job.records
            while records:
                run = records[: _run_length(records, 0, len(records))]
                self._store(run, self._convert_run(run))
                del records[: len(run)]
        except BaseException:
            self._job_failed = True
            raise

    def _reap(self) -> None:
        """Forget the finished batches at the front; a failed one is handled by _drain()."""
        while self._jobs and self._jobs[0][0].done():
            if self._jobs[0][0].exception() is not None:
                self._drain()
            self._jobs.pop(0)

    def _drain(self) -> None:
        """Wait for every background batch; if one failed, put what it and the later ones did
        not store back in front of the pending records, and raise its error."""
        self._check_fork()
        if not self._jobs:
            return
        for future, _ in self._jobs:  # all waits first: an interrupt here changes nothing
            future.exception()
        jobs, self._jobs = self._jobs, []
        errors = [future.exception() for future, _ in jobs]
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            self._requeue(jobs)  # the batches after a failed one were skipped whole
            self._job_failed = False
            raise error

    def _check_plan_params(self) -> None:
        """Raise (dropping pending records) if the model's parameter objects were replaced."""
        self._since_check = 0
        if self._model is None:
            return
        current = self._current_params()
        if any(a is not b for a, b in zip(current, self._plan_params, strict=True)):
            dropped, self._pending, self._plans = len(self._pending), [], {}
            self._num_records -= dropped
            raise RuntimeError(
                "the model's parameter objects were replaced since the tracker built its plan; "
                f"the {dropped} pending records may hold the old tensors and were dropped "
                "(records already being converted in the background are kept)"
            )

    @staticmethod
    def _convert_raw(run: list[tuple[int, Any]]) -> tuple[np.ndarray, ...]:
        from .stats import _cuda
        from .stats.summary import fields_from_states

        f, n, nnz, buckets, counts, flows = _cuda.fetch_many([rec.result for _, rec in run])
        # The statistics are computed from the raw states when the store is read, not here in
        # the training loop (-50 us per ViT-B/16-sized record).
        return partial(fields_from_states, f, n), nnz, buckets, counts, flows

    @staticmethod
    def _convert_summaries(run: list[tuple[int, Any]]) -> tuple[np.ndarray, ...]:
        rows = np.array(
            [[[getattr(s, f) for f in STAT_FIELDS] for s in summaries] for _, summaries in run],
            dtype=np.float64,
        )
        hists = [s.hist for _, summaries in run for s in summaries]
        nnz = np.zeros(len(hists), dtype=np.int64)
        buckets, counts = [], []
        for i, h in enumerate(hists):
            if h is None:  # a record without histograms
                continue
            c = np.asarray(h.counts, dtype=np.int64)
            idx = np.flatnonzero(c)
            nnz[i] = len(idx)
            buckets.append(idx + int(h.first))
            counts.append(c[idx])
        flows = np.array(
            [[0, 0, 0] if h is None else [getattr(h, f) for f in _FLOW_FIELDS] for h in hists],
            dtype=np.int64,
        )
        empty = np.empty(0, np.int64)
        return (
            rows,
            nnz.reshape(len(run), -1),
            np.concatenate(buckets) if buckets else empty,
            np.concatenate(counts) if counts else empty,
            flows,
        )

    def _store(self, run: list[tuple[int, Any]], converted: tuple[np.ndarray, ...]) -> None:
        """Append converted records: stats rows and the non-empty histogram buckets.

        Every array is shaped and checked before the first column grows, so a bad conversion
        leaves the store as it was (the run can be converted again).
        """
        rows, nnz, buckets, counts, flows = converted
        r, width = len(run), len(self.names)
        buckets, counts = np.asarray(buckets, np.int64), np.asarray(counts, np.int64)
        nnz = np.asarray(nnz, np.int64).reshape(r, width)
        flows = np.asarray(flows, np.int64).reshape(r, width, len(_FLOW_FIELDS))
        steps = np.array([step for step, _ in run], dtype=np.int64)
        has_hist = np.array([_payload_has_hist(p) for _, p in run], dtype=np.bool_)
        if not callable(rows):
            rows = np.asarray(rows, np.float64).reshape(r, width, len(STAT_FIELDS))
        if buckets.shape != counts.shape or buckets.ndim != 1 or len(buckets) != nnz.sum():
            raise ValueError("a converted run has inconsistent histogram columns")
        self._hist["bucket"].extend(buckets)
        self._hist["count"].extend(counts)
        self._nnz.extend(nnz)
        self._offsets = None
        self._flows.extend(flows)
        self._steps.extend(steps)
        self._has_hist.extend(has_hist)
        self._stats.extend(rows, r)

    def _record_tensor_columns(self) -> dict[str, np.ndarray]:
        """The ``hist_record`` and ``hist_tensor`` columns of the stored buckets."""
        nnz = self._nnz.values
        records, width = nnz.shape
        per_record = nnz.sum(axis=1)
        return {
            "hist_record": np.repeat(np.arange(records, dtype=np.int64), per_record),
            "hist_tensor": np.repeat(
                np.tile(np.arange(width, dtype=np.int64), records), nnz.ravel()
            ),
        }

    # ------------------------------------------------------------------ reading
    def trajectory(self) -> dict[str, Any]:
        """The whole record as columns (copies).

        Returns
        -------
        dict
            ``names`` (list of str, the last is :data:`TOTAL_NAME`), ``steps`` ``(T,)`` int64,
            ``stat_fields`` (tuple of str), ``stats`` ``(T, P + 1, S)`` float64, the sparse
            histogram columns ``hist_record``, ``hist_tensor``, ``hist_bucket``, ``hist_count``
            (int64, non-empty buckets only, ordered by record then tensor then bucket),
            ``hist_flows`` ``(T, P + 1, 3)`` int64 (each histogram's underflow, overflow and
            NaN counters), ``has_hist`` ``(T,)`` bool (records with histograms; the others have
            no buckets and zero counters), ``mantissa_bits``, ``every`` and ``hist_every``.
        """
        self._flush()
        return {
            "names": list(self.names),
            "steps": self._steps.values.copy(),
            "stat_fields": STAT_FIELDS,
            "stats": self._stats.values.copy(),
            **self._record_tensor_columns(),
            **{f"hist_{key}": col.values.copy() for key, col in self._hist.items()},
            "hist_flows": self._flows.values.copy(),
            "has_hist": self._has_hist.values.copy(),
            "mantissa_bits": self.mantissa_bits,
            "every": self.every,
            "hist_every": self.hist_every,
        }

    def stat(self, name: str, field: str) -> np.ndarray:
        """One statistic of one tensor over all records, shape ``(T,)``.

        Parameters
        ----------
        name : str
            A parameter name or :data:`TOTAL_NAME`.
        field : str
            One of :data:`STAT_FIELDS`.
        """
        if field not in STAT_FIELDS:
            raise ValueError(f"field must be one of {STAT_FIELDS}, got {field!r}")
        self._flush()
        return self._stats.values[:, self._index(name), STAT_FIELDS.index(field)].copy()

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown tensor name {name!r}; known: {self.names}") from None

    def _window(self, tensor: int, record: int) -> tuple[np.ndarray, int]:
        """Dense counts and first bucket of one stored histogram."""
        width = len(self.names)
        if self._offsets is None:
            self._offsets = np.concatenate(([0], np.cumsum(self._nnz.values.ravel())))
        lo, hi = (
            int(v) for v in self._offsets[record * width + tensor : record * width + tensor + 2]
        )
        buckets = self._hist["bucket"].values[lo:hi]
        if not len(buckets):
            return np.zeros(0, np.int64), 0
        first = int(buckets[0])
        counts = np.zeros(int(buckets[-1]) - first + 1, np.int64)
        counts[buckets - first] = self._hist["count"].values[lo:hi]
        return counts, first

    def _record_index(self, record: int) -> int:
        if isinstance(record, bool) or not isinstance(record, (int, np.integer)):
            raise TypeError(f"record must be an int, got {type(record).__name__}")
        self._flush()
        n = self._steps.n
        if not -n <= record < n:
            raise IndexError(f"record {record} out of range: the tracker holds {n} records")
        return int(record) % n

    @property
    def hist_records(self) -> np.ndarray:
        """Indices of the records that have histograms (all of them when ``hist_every`` is 1).

        Returns
        -------
        numpy.ndarray
            int64 record indices in increasing order, e.g. ``histogram(name, hist_records[-1])``
            is the latest histogram.
        """
        self._flush()
        return np.flatnonzero(self._has_hist.values)

    def histogram(self, name: str, record: int = -1) -> Any:
        """Rebuild the log :class:`~pyweightstat.Histogram` of one tensor at one record.

        Parameters
        ----------
        name : str
            A parameter name or :data:`TOTAL_NAME`.
        record : int
            Record index (negative counts from the end; ``-1`` is the latest).

        Returns
        -------
        pyweightstat.Histogram
            A ``kind="log"`` histogram on the universal grid, with ±Inf in underflow/overflow
            and the NaN count, exactly as the engine produced it.

        Raises
        ------
        ValueError
            If that record was taken without histograms (see ``hist_every`` and
            :attr:`hist_records`).
        """
        tensor = self._index(name)
        rec = self._record_index(record)
        if not self._has_hist.values[rec]:
            kept = self.hist_records
            hint = (
                f"the latest with histograms is record {int(kept[-1])}" if len(kept) else "none has"
            )
            raise ValueError(
                f"record {record} (step {int(self._steps.values[rec])}) was taken without "
                f"histograms (hist_every={self.hist_every}, or record(hist=False)); {hint}, "
                "see hist_records"
            )
        counts, first = self._window(tensor, rec)
        underflow, overflow, nan_count = (int(v) for v in self._flows.values[rec, tensor])
        return from_core(
            (first, counts, underflow, overflow, nan_count), False, None, self.mantissa_bits
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the record to one ``.npz`` file (written atomically; no pickles).

        Parameters
        ----------
        path : str or path-like
            Destination file; written exactly there (no suffix is added).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        data = self.trajectory()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                format_version=np.int64(_FORMAT_VERSION),
                names=np.array(data["names"], dtype=np.str_),
                stat_fields=np.array(STAT_FIELDS, dtype=np.str_),
                mantissa_bits=np.int64(self.mantissa_bits),
                every=np.int64(self.every),
                hist_every=np.int64(self.hist_every),
                num_steps=np.int64(self.num_steps),
                steps=data["steps"],
                stats=data["stats"],
                hist_record=data["hist_record"],
                hist_tensor=data["hist_tensor"],
                hist_bucket=data["hist_bucket"],
                hist_count=data["hist_count"],
                hist_flows=data["hist_flows"],
                has_hist=data["has_hist"],
            )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WeightTracker:
        """Read a record written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            The ``.npz`` file.

        Returns
        -------
        WeightTracker
            A read-only tracker (no model: :meth:`record` raises) with the same trajectory.
        """
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
        version = int(data.get("format_version", -1))
        if version not in (1, _FORMAT_VERSION):
            raise ValueError(f"{path}: unsupported tracker file format version {version}")
        if tuple(str(f) for f in data["stat_fields"]) != STAT_FIELDS:
            raise ValueError(f"{path}: its stat_fields differ from this version's STAT_FIELDS")
        tracker = cls.__new__(cls)
        tracker._model = None
        tracker._lazy = False
        tracker._plans, tracker._plan_params, tracker._plan_failed = {}, [], False
        tracker._params_snapshot = None
        tracker._since_check = 0
        tracker.names = [str(n) for n in data["names"]]
        tracker.every = int(data["every"])
        tracker.hist_every = int(data.get("hist_every", 1))
        tracker.mantissa_bits = int(data["mantissa_bits"])
        tracker.max_pending = 1
        tracker.num_steps = int(data["num_steps"])
        tracker._init_store()
        tracker.background = False
        tracker._steps.extend(data["steps"].astype(np.int64))
        tracker._num_records = tracker._steps.n
        records = len(data["steps"])
        has_hist = data.get("has_hist", np.ones(records, dtype=np.bool_))  # version 1: all
        if has_hist.shape != (records,):
            raise ValueError(f"{path}: has_hist does not have one entry per record")
        tracker._has_hist.extend(has_hist.astype(np.bool_))
        tracker._stats.extend(data["stats"].astype(np.float64))
        for key, col in tracker._hist.items():
            col.extend(data[f"hist_{key}"].astype(np.int64))
        width = len(tracker.names)
        keys = data["hist_record"].astype(np.int64) * width + data["hist_tensor"].astype(np.int64)
        if len(keys) and np.any(np.diff(keys) < 0):
            raise ValueError(f"{path}: histogram rows are not ordered by record and tensor")
        tracker._nnz.extend(np.bincount(keys, minlength=records * width).reshape(records, width))
        tracker._flows.extend(data["hist_flows"].astype(np.int64))
        return tracker

    # ------------------------------------------------------------------ TensorBoard
    def to_tensorboard(self, writer: Any, tag_prefix: str = "weights") -> int:
        """Write every recorded histogram to TensorBoard without re-binning the weights.

        Each histogram goes through ``SummaryWriter.add_histogram_raw`` with the tensor's own
        min, max, count, sum and sum of squares; its buckets are the universal log buckets from
        the first to the last non-empty one (``bucket_limits`` = their upper edges; the first
        bucket's lower edge is implied by ``min``).  Only finite values are in a histogram;
        records with no finite value, and records taken without histograms (``hist_every``), are
        skipped.

        Parameters
        ----------
        writer : torch.utils.tensorboard.SummaryWriter or str or path-like
            A writer, or a log directory for a new writer (closed afterwards).
        tag_prefix : str
            Tags are ``f"{tag_prefix}/{name}"``; the global step is the optimisation step.

        Returns
        -------
        int
            The number of histograms written.
        """
        try:
            import tensorboard  # noqa: F401  (optional dependency)
        except ImportError as exc:
            raise ImportError(
                "WeightTracker.to_tensorboard needs the optional dependency 'tensorboard' "
                "(pip install tensorboard)"
            ) from exc
        if not isinstance(tag_prefix, str):
            raise TypeError(f"tag_prefix must be a str, got {type(tag_prefix).__name__}")
        if isinstance(writer, (str, os.PathLike)):
            from torch.utils.tensorboard import SummaryWriter

            with _closing(SummaryWriter(log_dir=os.fspath(writer))) as own:
                return self.to_tensorboard(own, tag_prefix)
        if not hasattr(writer, "add_histogram_raw"):
            raise TypeError(
                f"writer must be a SummaryWriter (with add_histogram_raw), got {type(writer)}"
            )
        from pyweightstat.stats.layout import edges as bucket_edges

        self._flush()
        field = {f: i for i, f in enumerate(STAT_FIELDS)}
        stats, steps = self._stats.values, self._steps.values
        written = 0
        for rec in np.flatnonzero(self._has_hist.values):
            for tensor, name in enumerate(self.names):
                counts, first = self._window(tensor, rec)
                row = stats[rec, tensor]
                num = int(counts.sum())
                if num == 0:
                    continue
                upper = bucket_edges(first, len(counts), self.mantissa_bits)[1:]
                writer.add_histogram_raw(
                    f"{tag_prefix}/{name}",
                    min=float(row[field["min"]]),
                    max=float(row[field["max"]]),
                    num=num,
                    sum=float(row[field["mean"]] * row[field["count"]]),
                    sum_squares=float(row[field["l2"]] ** 2),
                    bucket_limits=upper.tolist(),
                    bucket_counts=counts.tolist(),
                    global_step=int(steps[rec]),
                )
                written += 1
        writer.flush()
        return written


@contextmanager
def _closing(writer: Any) -> Iterator[Any]:
    try:
        yield writer
    finally:
        writer.close()
