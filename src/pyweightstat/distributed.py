"""Merging engine results across the ranks of a ``torch.distributed`` process group."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["all_reduce"]

T = TypeVar("T")


def all_reduce(obj: T, group: Any = None) -> T:
    """Merge a ``Summary`` or ``Histogram`` over all ranks of a process group.

    Every rank contributes its local result and every rank receives the same global result:
    the merge of all ranks' states, as if the statistics had been computed on the
    concatenation of every rank's data.

    Parameters
    ----------
    obj : Summary or Histogram
        This rank's local result.  Every rank must pass the same type; uniform histograms
        must share their edges, log histograms must share ``mantissa_bits`` (their windows may
        differ: merging aligns them on the universal grid).
    group : torch.distributed.ProcessGroup, optional
        The group to reduce over; None means the default (world) group.

    Returns
    -------
    Summary or Histogram
        A new object holding the global result (``obj`` is not modified).  When
        ``torch.distributed`` is unavailable or not initialised there is a single rank and a
        copy of ``obj`` is returned.

    Raises
    ------
    TypeError
        If ``obj`` is not a ``Summary`` or ``Histogram``, or the ranks pass different types.
    ValueError
        If the ranks' histograms cannot be merged (different edges or mantissa bits).

    Notes
    -----
    The states are exchanged with ``torch.distributed.all_gather_object`` (their
    ``to_dict()`` form, a few numbers and one count array) and merged on every rank in rank
    order, so the result is deterministic and bit-identical on all ranks.  With the NCCL
    backend, ``torch.cuda.set_device`` must have been called on each rank, as for any
    object collective.  The collective must be called by every rank of the group.
    """
    from pyweightstat import Histogram, Summary

    if isinstance(obj, Summary):
        kind = "Summary"
    elif isinstance(obj, Histogram):
        kind = "Histogram"
    else:
        raise TypeError(
            f"all_reduce: obj must be a pyweightstat Summary or Histogram, got {type(obj).__name__}"
        )
    cls = Summary if kind == "Summary" else Histogram
    state = obj.to_dict()

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return cls.from_dict(state)  # a world of one rank

    world = dist.get_world_size(group)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (kind, state), group=group)

    kinds = {k for k, _ in gathered}
    if kinds != {kind}:
        raise TypeError(f"all_reduce: ranks passed different types: {sorted(kinds)}")
    result = cls.from_dict(gathered[0][1])
    for _, other in gathered[1:]:
        result = result.merge(cls.from_dict(other))
    return result
