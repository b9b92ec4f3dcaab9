"""Small helpers shared by the model families."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "check_in_shape", "check_positive_int", "make_activation"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def check_positive_int(value: object, arg: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value}")
    return value


def check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``in_shape`` as a ``(C, H, W)`` tuple of positive ints."""
    shape = tuple(in_shape)
    if len(shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}")
    for v in shape:
        check_positive_int(v, "in_shape entries")
    return shape  # type: ignore[return-value]
