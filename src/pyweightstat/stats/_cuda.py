"""CUDA dispatch of the engine: enqueue the fused pass, return Summaries that stay on the device.

One call of :func:`run` exports every input through DLPack on the caller's current stream (the
PyTorch current stream of the inputs' device for ``torch.Tensor`` inputs, the legacy default
stream for other DLPack producers), enqueues the kernels on that stream and returns at once: no
host synchronisation. All Summaries of one call share one small device result buffer; reading any
value of any of them copies the whole buffer to the host once (waiting for that call's work
only, not for work queued after it on the stream; results of a call captured into a CUDA graph
can be read only after the capture, and such a read waits for the whole device).

The result buffer of ``torch`` inputs comes from PyTorch's caching allocator (a ``torch.uint8``
tensor), so the call works inside ``torch.cuda.graph`` capture and follows PyTorch's stream-ordered
memory reuse; other inputs use ``cudaMallocAsync``/``cudaFreeAsync`` on the same stream.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _input
from .histogram import Histogram, from_core
from .summary import Summary

_HIST_NONE, _HIST_UNIFORM, _HIST_LOG = 0, 1, 2
_EDGES_NONE, _EDGES_RANGE, _EDGES_DATA, _EDGES_EXPLICIT = 0, 1, 2, 3
_DLPACK_LEGACY_STREAM = 1  # DLPack stream protocol: 1 is CUDA's legacy default stream
_MAX_STRIDED_DIMS = 6  # csrc/cuda/describe_cuda.h kMaxCudaDims


def _core() -> Any:
    from .. import _C

    return _C


class _Call:
    """The device results of one ``describe_cuda`` call and their host copy once fetched."""

    __slots__ = (
        "_handle",
        "_res",
        "_total",
        "_total_pending",
        "edge_mode",
        "edges",
        "hist_kind",
        "mantissa_bits",
        "ntensors",
    )

    def __init__(
        self,
        handle: Any,
        ntensors: int,
        hist_kind: int,
        mantissa_bits: int,
        edge_mode: int,
        edges: list[np.ndarray] | None,
    ) -> None:
        self._handle = handle
        self._res: tuple | None = None
        self._total: tuple | None = None
        self._total_pending = False
        self.ntensors = ntensors
        self.hist_kind = hist_kind
        self.mantissa_bits = mantissa_bits
        self.edge_mode = edge_mode
        self.edges = edges

    def _maybe_release(self) -> None:
        # Free the device buffer as soon as nothing more can be read from it.
        if self._res is not None and not self._total_pending:
            self._handle = None

    def _make_hist(self, h: tuple | None, edges: np.ndarray | None) -> Histogram | None:
        return from_core(h, self.hist_kind == _HIST_UNIFORM, edges, self.mantissa_bits)

    def state(self, i: int) -> tuple[np.ndarray, np.ndarray, Histogram | None]:
        """Host state of tensor ``i`` (copies every tensor's results on the first call)."""
        if self._res is None:
            self._res = self._handle.fetch()
            self._maybe_release()
        f, n, hists, dev_edges = self._res
        hist = None
        if hists is not None:
            edges = None
            if self.hist_kind == _HIST_UNIFORM:
                edges = dev_edges[i] if dev_edges is not None else self.edges[i]
            hist = self._make_hist(hists[i], edges)
        return f[i], n[i], hist

    def launch_total(self, with_hist: bool) -> None:
        """Enqueue the merge of every tensor into the total (no synchronisation)."""
        self._handle.launch_total(with_hist)
        self._total_pending = True

    def total_state(self) -> tuple[np.ndarray, np.ndarray, Histogram | None]:
        """Host state of the total of all tensors."""
        if self._total is None:
            self._total = self._handle.fetch_total()
            self._total_pending = False
            self._maybe_release()
        f, n, h = self._total
        edges = self.edges[0] if self.hist_kind == _HIST_UNIFORM and self.edges else None
        return f, n, self._make_hist(h, edges)


class _Fetch:
    """The deferred ``fetch`` of one Summary: tensor ``index`` of ``call`` (-1: the total)."""

    __slots__ = ("call", "index")

    def __init__(self, call: _Call, index: int) -> None:
        self.call = call
        self.index = index

    def __call__(self) -> tuple[np.ndarray, np.ndarray, Histogram | None]:
        if self.index < 0:
            return self.call.total_state()
        return self.call.state(self.index)


def _edge_request(
    hist_kind: int, bins: int, edges: list[Any] | None, p: int
) -> tuple[int, float, float, np.ndarray | None, list[np.ndarray] | None]:
    """(edge_mode, lo, hi, explicit host edges, host edges per tensor) for the kernels."""
    if hist_kind != _HIST_UNIFORM:
        return _EDGES_NONE, 0.0, 1.0, None, None
    if edges is None or all(e is None for e in edges):
        return _EDGES_DATA, 0.0, 1.0, None, None  # each tensor's finite min/max, on the device
    arrs = [np.ascontiguousarray(e, dtype=np.float64) for e in edges]
    if len(arrs) != p or any(a.shape != (bins + 1,) for a in arrs):
        raise ValueError(f"edges: one array of bins + 1 = {bins + 1} values per input expected")
    first = arrs[0]
    shared = all(a is first or np.array_equal(a, first) for a in arrs)
    if shared and np.all(np.isfinite(first[[0, -1]])):
        lin = np.linspace(first[0], first[-1], bins + 1, endpoint=True, dtype=np.float64)
        if np.array_equal(lin, first):
            # Recomputed on the device (same operations as np.linspace): no host-to-device copy.
            return _EDGES_RANGE, float(first[0]), float(first[-1]), None, arrs
    return _EDGES_EXPLICIT, 0.0, 1.0, np.stack(arrs), arrs


# DLPack's stream -1 ("no synchronisation") skips torch's per-tensor stream bookkeeping; it is
# exact here because the kernels run on the very stream torch considers current. Torch versions
# that reject it get the current stream's handle instead.
_torch_accepts_no_sync = [True]


def _export_torch(x: Any, stream: int) -> Any:
    if x.dim() > _MAX_STRIDED_DIMS and not x.is_contiguous():
        x = x.contiguous()  # on the current stream, ordered before the kernels
    if _torch_accepts_no_sync[0]:
        try:
            return x.__dlpack__(stream=-1)
        except (AssertionError, BufferError, RuntimeError, TypeError, ValueError):
            _torch_accepts_no_sync[0] = False
    return x.__dlpack__(stream=stream)


def _torch_allocator(device: Any) -> Any:
    """``alloc(nbytes)``: a ``torch.uint8`` buffer on ``device`` from torch's caching allocator."""
    import torch

    def alloc(nbytes: int) -> Any:
        return torch.empty(int(nbytes), dtype=torch.uint8, device=device)

    return alloc


def _current_stream_getter(device_index: int) -> Callable[[], int]:
    """``get()``: the handle of ``torch``'s current CUDA stream on ``device_index``, as an int.

    ``torch._C._cuda_getCurrentRawStream`` (what torch's own generated kernels call) returns the
    handle directly; ``torch.cuda.current_stream`` builds a ``Stream`` object first, about ten
    microseconds more per call on a plan's per-step path. The public call is the fallback for a
    ``torch`` without the private one.
    """
    import torch

    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return functools.partial(raw, device_index)
    device = torch.device("cuda", device_index)
    return lambda: int(torch.cuda.current_stream(device).cuda_stream)


def _export_other(x: Any) -> Any:
    try:
        return x.__dlpack__(stream=_DLPACK_LEGACY_STREAM)
    except TypeError:  # producers without the stream keyword
        return x.__dlpack__()


def run(
    items: list[_input.Prepared],
    *,
    moments: bool,
    hist_kind: int,
    bins: int = 0,
    edges: list[Any] | None = None,
    mantissa_bits: int = 7,
) -> list[Summary]:
    """Enqueue the fused pass over CUDA inputs; one deferred :class:`Summary` per input.

    Parameters
    ----------
    items : list of _input.Prepared
        Validated CUDA inputs, all on one device.
    moments : bool
        Unused: the GPU pass always computes the moments (it is memory-bound).
    hist_kind : int
        0 none, 1 uniform, 2 universal log.
    bins : int
        Uniform bins.
    edges : list of ndarray or None
        Uniform edges per input; ``None`` (or a list of ``None``) means each input's finite
        min/max, found on the device without a host synchronisation.
    mantissa_bits : int
        Log layout.
    """
    del moments
    if not items:
        return []
    dev = items[0].device_id
    for p in items:
        if p.device_id != dev:
            raise ValueError(
                f"{p.name} is on cuda:{p.device_id} but {items[0].name} is on cuda:{dev}; "
                "pass inputs from one device per call"
            )
    edge_mode, lo, hi, host_edges, edge_list = _edge_request(hist_kind, bins, edges, len(items))
    core = _core()
    names = [p.name for p in items]
    torch = sys.modules.get("torch")
    if torch is not None and all(isinstance(p.obj, torch.Tensor) for p in items):
        with torch.cuda.device(dev):
            stream = _current_stream_getter(dev)()
            dl_stream = stream if stream != 0 else _DLPACK_LEGACY_STREAM
            caps = [_export_torch(p.obj, dl_stream) for p in items]

            alloc = _torch_allocator(torch.device("cuda", dev))
            handle = core.describe_cuda(
                caps,
                names,
                dev,
                stream,
                hist_kind,
                bins,
                mantissa_bits,
                edge_mode,
                lo,
                hi,
                host_edges,
                alloc,
            )
    else:
        caps = [_export_other(p.obj) for p in items]
        handle = core.describe_cuda(
            caps, names, dev, 0, hist_kind, bins, mantissa_bits, edge_mode, lo, hi, host_edges, None
        )
    call = _Call(handle, len(items), hist_kind, mantissa_bits, edge_mode, edge_list)
    return [Summary._deferred(_Fetch(call, i)) for i in range(len(items))]


def merge_total(res: list[Summary]) -> Summary:
    """The Summary of all inputs of one :func:`run` call, merged on the device (deferred).

    The total has a histogram when the inputs share bins: log histograms, or uniform ones with
    an explicit ``range`` (as :func:`pyweightstat.stats.api.merge_all` decides on the host).
    """
    fetches = [s._fetch for s in res]
    call = fetches[0].call if fetches and isinstance(fetches[0], _Fetch) else None
    if (
        call is None
        or call._handle is None
        or call.ntensors != len(res)
        or any(not isinstance(f, _Fetch) or f.call is not call for f in fetches)
    ):
        from .api import merge_all

        return merge_all(res, with_hist=_same_bins([s.hist for s in res]))
    with_hist = call.hist_kind == _HIST_LOG or (
        call.hist_kind == _HIST_UNIFORM and call.edge_mode == _EDGES_RANGE
    )
    call.launch_total(with_hist)
    return Summary._deferred(_Fetch(call, -1))


def _same_bins(hists: list[Histogram | None]) -> bool:
    """Whether histograms can be merged (all None, all log with one m, or one set of edges)."""
    if all(h is None for h in hists):
        return True
    if any(h is None for h in hists):
        return False
    h0 = hists[0]
    if h0.kind == "log":
        return all(h.kind == "log" and h.mantissa_bits == h0.mantissa_bits for h in hists)
    return all(h.kind == "uniform" and np.array_equal(h.edges, h0.edges) for h in hists)


#: The default of :class:`Plan`'s ``device_table`` (``None``: ``PWS_CUDA_PLAN_TABLE``); for
#: benchmarks that compare both forms in one process (e.g. a WeightTracker's plans are built at
#: its first record).
DEVICE_TABLES: bool | None = None


class Plan:
    """A fixed list of CUDA ``torch`` tensors described again and again with one launch each.

    The inputs are validated, exported and laid out once; :meth:`launch` only enqueues the fused
    pass and the total on the current stream and returns the raw device result (no
    :class:`Summary` objects, no host synchronisation). Read results in bulk with
    :func:`fetch_many`. Used by :class:`pyweightstat.WeightTracker` on CUDA models.

    Parameters
    ----------
    tensors : list of torch.Tensor
        CUDA tensors on one device; each must stay at its address (checked by :meth:`matches`).
    mantissa_bits : int or None
        Log histograms with this many mantissa bits, or ``None`` for moments only.
    names : list of str, optional
        Names used in error messages.
    device_table : bool, optional
        Copy the launch tables to device memory at the first launch outside a CUDA graph
        capture, so that each launch carries a pointer instead of the tables (28,848 bytes per
        200 tensors); ``None``: :data:`DEVICE_TABLES`, or where that is ``None`` the
        environment (``PWS_CUDA_PLAN_TABLE=device``; unset: ``False``). Freeing such a plan
        (with its last result) waits for the device.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyweightstat.describe_many` for unsupported inputs, and ``ValueError`` for a
        tensor whose memory layout needs a copy on CUDA (the plan cannot follow a copy).
    """

    def __init__(
        self,
        tensors: list[Any],
        mantissa_bits: int | None,
        names: list[str] | None = None,
        device_table: bool | None = None,
    ) -> None:
        import torch

        if not _core().build_info()["cuda"]:
            raise ValueError("this build of pyweightstat has no CUDA kernels")
        names = names or [f"tensors[{i}]" for i in range(len(tensors))]
        items = [_input.prepare(t, name) for t, name in zip(tensors, names, strict=True)]
        if not items or any(
            p.device != "cuda" or not isinstance(p.obj, torch.Tensor) for p in items
        ):
            raise ValueError("a Plan needs one or more CUDA torch tensors")
        dev = items[0].device_id
        if any(p.device_id != dev for p in items):
            raise ValueError("a Plan's tensors must all be on one CUDA device")
        for p, t in zip(items, tensors, strict=True):
            if p.obj.data_ptr() != t.data_ptr() or (
                p.obj.dim() > _MAX_STRIDED_DIMS and not p.obj.is_contiguous()
            ):
                raise ValueError(
                    f"{p.name}: this tensor needs a copy on CUDA; a Plan cannot use it"
                )
        self.device = dev
        self.mantissa_bits = mantissa_bits
        self._tensors = [p.obj for p in items]
        self._ptrs = [t.data_ptr() for t in self._tensors]
        hist_kind = _HIST_NONE if mantissa_bits is None else _HIST_LOG
        with torch.cuda.device(dev):
            caps = [t.__dlpack__(stream=-1) for t in self._tensors]
            if device_table is None:
                device_table = DEVICE_TABLES
            self._plan = _core().CudaPlan(
                caps, [p.name for p in items], dev, hist_kind, mantissa_bits or 0, device_table
            )
        self._device = torch.device("cuda", dev)
        self._alloc = _torch_allocator(self._device)
        self._stream = _current_stream_getter(dev)

    @property
    def device_table(self) -> bool:
        """Whether the launches read the tables from device memory (see ``device_table``)."""
        return bool(self._plan.device_table)

    @property
    def result_bytes(self) -> int:
        """Bytes of one :meth:`launch` result that a fetch copies (states and histograms); with
        log histograms the result's buffer also holds that launch's scratch (a 104-byte state per
        chunk of 2^16 to 2^18 values, at most an eighth of this) until it is dropped."""
        return int(self._plan.result_bytes)

    def matches(self, tensors: list[Any]) -> bool:
        """Whether ``tensors`` are still at the addresses the plan reads (same count, in order)."""
        import torch

        # one C-level loop (it runs at every record of a tracker: ~150 tensors for a ViT-B/16)
        return list(map(torch.Tensor.data_ptr, tensors)) == self._ptrs

    def launch(self) -> Any:
        """Enqueue the pass over the tensors and their total on the current stream."""
        return self._plan.launch(self._stream(), self._alloc, True)


def fetch_many(results: list[Any]) -> tuple[np.ndarray, ...]:
    """Copy many :meth:`Plan.launch` results to the host at once.

    Waits only for the work of those results (later work on the stream keeps running), then
    copies every state and the occupied window of every log histogram through pinned memory.

    Returns
    -------
    tuple
        ``f`` (R, P + 1, 8) float64 and ``n`` (R, P + 1, 5) int64 raw states (slot ``P`` is the
        total); ``nnz`` (R, P + 1) int64, the number of non-empty log buckets of each
        histogram; ``buckets`` and ``counts`` int64, those buckets (global index on the universal
        grid) and their counts in (result, slot, bucket) order; ``flows`` (R, P + 1, 3) int64
        (underflow, overflow, NaN counts).
    """
    return tuple(_core().fetch_many(list(results)))


def last_launch_phases() -> dict[str, float] | None:
    """Host seconds of each phase of the calling thread's last CUDA launch (a diagnostic).

    The phases of one :meth:`Plan.launch` or :func:`run` in the C++ layer, in order: ``result``
    (the result object, the device guard), ``allocate`` (the allocator: torch's caching allocator
    through a Python call), ``release_gil``, ``pass`` (the pass's memset and kernel launches),
    ``total`` (the total's launch), ``event`` (the capture check, the event record),
    ``acquire_gil`` (taking the GIL back: it waits while another Python thread holds it) and
    ``finish``. Python's part of the call (the wrapper, the stream handle) is not in them.
    ``bench/bench_stats.py`` reads them after each tracker record inside a training loop.

    Returns
    -------
    dict or None
        Phase name to seconds; ``None`` where this thread launched nothing yet (or the build
        has no CUDA).
    """
    core = _core()
    ns = core.cuda_last_launch_ns() if hasattr(core, "cuda_last_launch_ns") else None
    if ns is None:
        return None
    return {name: t / 1e9 for name, t in zip(core.CUDA_LAUNCH_PHASES, ns, strict=True)}
