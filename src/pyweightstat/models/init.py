"""Weight initialisers, applied the same way to every family.

Every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` gets the scheme; LayerNorm, ViT's position embedding
and CLS token keep their own initialisation.

- ``default``: the framework's own initialisation (``reset_parameters()``, i.e. Kaiming-uniform
  with ``a = sqrt(5)`` for weights and uniform ``±1/sqrt(fan_in)`` for biases).
- ``normal``: weights ``N(0, scale²)``, biases 0.
- ``uniform``: weights ``U(-scale, scale)``, biases 0.
- ``xavier``: Xavier/Glorot uniform (gain 1), biases 0.
- ``kaiming``: Kaiming/He normal, fan-in, ReLU gain, biases 0.

``scale`` is used by ``normal`` and ``uniform`` only. Draws come from torch's global RNG, so
seed it (``torch.manual_seed``) for reproducibility.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["INIT_SCHEMES", "init_weights"]

INIT_SCHEMES = ("default", "normal", "uniform", "xavier", "kaiming")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "default", scale: float = 0.05) -> nn.Module:
    """Re-initialise every Linear/Conv layer of ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Any model.
    scheme : str
        ``default``, ``normal``, ``uniform``, ``xavier`` or ``kaiming``.
    scale : float
        Standard deviation (``normal``) or half-width (``uniform``); must be finite and > 0.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    ValueError
        For an unknown ``scheme`` or a bad ``scale``.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    for module in model.modules():
        if not isinstance(module, _LAYERS):
            continue
        if scheme == "default":
            module.reset_parameters()
            continue
        w = module.weight
        if scheme == "normal":
            nn.init.normal_(w, 0.0, scale)
        elif scheme == "uniform":
            nn.init.uniform_(w, -scale, scale)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(w)
        else:
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
