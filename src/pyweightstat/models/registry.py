"""Model registry: family name + config dict -> model."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from .cnn import CNN
from .dnn import DNN
from .vit import ViT

__all__ = ["FAMILIES", "build_model", "count_parameters", "family_options"]

FAMILIES: dict[str, type[nn.Module]] = {"dnn": DNN, "cnn": CNN, "vit": ViT}


def family_options(family: str) -> dict[str, Any]:
    """Return the configuration keys of ``family`` with their defaults.

    Parameters
    ----------
    family : str
        ``dnn``, ``cnn`` or ``vit``.

    Returns
    -------
    dict
        Key -> default value.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    params = inspect.signature(FAMILIES[family].__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(family: str, in_shape: Sequence[int], num_classes: int, **cfg: Any) -> nn.Module:
    """Build a model of ``family`` for inputs ``in_shape`` and ``num_classes`` outputs.

    Parameters
    ----------
    family : str
        ``dnn``, ``cnn`` or ``vit``.
    in_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of outputs.
    **cfg
        Family options (see :func:`family_options`; e.g. ``width``/``depth`` for ``dnn``).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        For an unknown family or unknown option names.
    """
    options = family_options(family)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for family {family!r}; allowed: {sorted(options)}"
        )
    return FAMILIES[family](in_shape, num_classes, **cfg)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Return the number of scalar parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
