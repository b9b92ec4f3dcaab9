"""ViT family: patch embedding, pre-LayerNorm transformer blocks, CLS token, linear head.

Attention is written with plain ``nn.Linear`` layers (``qkv`` and ``proj``), not
``nn.MultiheadAttention``, so that every weight matrix is an ordinary Linear layer that the
tracker and node strength can see.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._util import check_in_shape, check_positive_int

__all__ = ["Attention", "Block", "ViT"]


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv = Linear(dim, 3 dim)``, softmax attention, ``proj``.

    Parameters
    ----------
    dim : int
        Embedding dimension (divisible by ``heads``).
    heads : int
        Number of heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of ``x`` (shape ``(N, L, dim)``)."""
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens ``(N, L, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer for small images.

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, H, W)``; ``H`` and ``W`` must be multiples of ``patch_size``.
    num_classes : int
        Number of outputs.
    patch_size : int
        Side of the square, non-overlapping patches.
    dim : int
        Embedding dimension.
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads per block (must divide ``dim``).
    mlp_ratio : float
        Hidden width of each block's MLP, as a multiple of ``dim``.
    cls_token : bool
        Prepend a learned CLS token and classify from it; otherwise classify from the mean token.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        *,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        cls_token: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = check_in_shape(in_shape)
        check_positive_int(num_classes, "num_classes")
        p = check_positive_int(patch_size, "patch_size")
        check_positive_int(dim, "dim")
        check_positive_int(depth, "depth")
        check_positive_int(heads, "heads")
        if h % p or w % p:
            raise ValueError(f"patch_size {p} does not divide the image size {h}x{w}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
            raise TypeError(f"mlp_ratio must be a number, got {type(mlp_ratio).__name__}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        if not isinstance(cls_token, bool):
            raise TypeError(f"cls_token must be a bool, got {type(cls_token).__name__}")
        self.patch_size = p
        self.num_patches = (h // p) * (w // p)
        self.patch_embed = nn.Linear(c * p * p, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        n_tokens = self.num_patches + (1 if cls_token else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Cut images ``(N, C, H, W)`` into flattened patches ``(N, L, C * p * p)``."""
        n, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        tokens = self.patch_embed(self.patchify(x))
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)
