"""DNN family: a multi-layer perceptron on flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._util import check_in_shape, check_positive_int, make_activation

__all__ = ["DNN"]


class DNN(nn.Module):
    """Fully connected network: ``Flatten -> [Linear -> act] * depth -> Linear``.

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, H, W)`` of the input images.
    num_classes : int
        Number of outputs.
    width : int
        Hidden width of every hidden layer (ignored when ``widths`` is given).
    depth : int
        Number of hidden layers (0 gives a linear classifier).
    activation : str
        ``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``leaky_relu``, ``elu`` or ``silu``.
    widths : sequence of int, optional
        Explicit hidden widths, one per hidden layer (overrides ``width`` and ``depth``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        width: int = 100,
        depth: int = 2,
        activation: str = "relu",
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        c, h, w = check_in_shape(in_shape)
        check_positive_int(num_classes, "num_classes")
        if widths is None:
            check_positive_int(width, "width")
            check_positive_int(depth, "depth", minimum=0)
            widths = [width] * depth
        else:
            widths = [check_positive_int(v, "widths entries") for v in widths]
        self.widths = tuple(widths)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = c * h * w
        for width_i in self.widths:
            layers += [nn.Linear(fan_in, width_i), make_activation(activation)]
            fan_in = width_i
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.net(x)
