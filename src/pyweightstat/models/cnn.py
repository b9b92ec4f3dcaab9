"""CNN family: blocks of 3x3 convolution + ReLU (+ 2x2 max-pool), then a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._util import check_in_shape, check_positive_int, make_activation

__all__ = ["CNN"]


class CNN(nn.Module):
    """Convolutional network: ``[Conv3x3 -> act (-> MaxPool2)] * blocks -> Flatten -> head``.

    Convolutions use padding 1 (spatial size kept); each max-pool halves it (floor).

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, H, W)`` of the input images.
    num_classes : int
        Number of outputs.
    blocks : int
        Number of conv blocks (1-4 in the study).
    channels : int or sequence of int
        Output channels: one int for every block, or one entry per block.
    pool : bool
        2x2 max-pool after every block.
    head_hidden : int
        Width of a hidden Linear layer in the head (0: the head is one Linear layer).
    activation : str
        Activation after every convolution (and the head's hidden layer).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        blocks: int = 2,
        channels: int | Sequence[int] = 32,
        pool: bool = True,
        head_hidden: int = 0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        c, h, w = check_in_shape(in_shape)
        check_positive_int(num_classes, "num_classes")
        check_positive_int(blocks, "blocks")
        check_positive_int(head_hidden, "head_hidden", minimum=0)
        if isinstance(channels, int):
            chans = [check_positive_int(channels, "channels")] * blocks
        else:
            chans = [check_positive_int(v, "channels entries") for v in channels]
            if len(chans) != blocks:
                raise ValueError(f"channels has {len(chans)} entries but blocks={blocks}")
        if not isinstance(pool, bool):
            raise TypeError(f"pool must be a bool, got {type(pool).__name__}")
        self.channels = tuple(chans)
        layers: list[nn.Module] = []
        for c_out in chans:
            layers += [nn.Conv2d(c, c_out, 3, padding=1), make_activation(activation)]
            if pool:
                if h < 2 or w < 2:
                    raise ValueError(
                        f"{blocks} pooled blocks shrink the {tuple(in_shape)} input below 1x1"
                    )
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = c_out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        if head_hidden:
            head += [nn.Linear(c * h * w, head_hidden), make_activation(activation)]
            head.append(nn.Linear(head_hidden, num_classes))
        else:
            head.append(nn.Linear(c * h * w, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.head(self.features(x))
