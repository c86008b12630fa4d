"""Capsule layers (Sabour, Frosst, Hinton 2017, "Dynamic Routing Between Capsules").

Reference implementations that trace through ``torch.fx``, so that CapsNets can be
analysed; the plugin ``rfscope.plugins.capsule`` explains :class:`DigitCaps` to the
analyser (every output capsule is routed from every input capsule: a global RF).

>>> import torch
>>> caps = DigitCaps(in_caps=12, in_dim=8, out_caps=3, out_dim=4)
>>> caps(torch.randn(2, 12, 8)).shape
torch.Size([2, 3, 4])
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["squash", "PrimaryCaps", "DigitCaps"]


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """``|s|^2 / (1 + |s|^2) * s / |s|``: keeps the direction, maps the length into [0, 1)."""
    n2 = (s * s).sum(dim=dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + eps)


class PrimaryCaps(nn.Module):
    """A conv whose ``types*dim`` output channels are read as ``types`` capsule maps of ``dim`` values.

    Output ``(N, types*H*W, dim)``: one squashed capsule per type and position, each with the
    conv's local receptive field.
    """

    def __init__(self, c_in: int, types: int, dim: int, k: int = 9, stride: int = 2) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.conv = nn.Conv2d(c_in, types * dim, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.conv(x)
        n, _, h, w = u.shape
        u = u.view(n, self.types, self.dim, h, w).permute(0, 1, 3, 4, 2)
        return squash(u.reshape(n, self.types * h * w, self.dim))


class DigitCaps(nn.Module):
    """Fully connected capsules with dynamic routing by agreement.

    Each input capsule ``i`` predicts every output capsule ``j`` through its own
    transformation matrix ``W[i, j]`` (``out_dim x in_dim``); ``iterations`` rounds of
    routing weigh the predictions by their agreement with the squashed outputs.
    Input ``(N, in_caps, in_dim)``, output ``(N, out_caps, out_dim)``.
    """

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError("routing needs at least one iteration")
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        self.iterations = iterations
        self.W = nn.Parameter(0.01 * torch.randn(in_caps, out_caps, out_dim, in_dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # predictions u_hat[n, i, j] = W[i, j] @ u[n, i]
        u_hat = torch.einsum("ijdk,nik->nijd", self.W, u)
        b = torch.zeros(u_hat.shape[:3], dtype=u.dtype, device=u.device)
        v = u_hat.new_zeros(())
        for r in range(self.iterations):
            c = torch.softmax(b, dim=2)  # each input capsule splits its vote over the outputs
            v = squash((c.unsqueeze(-1) * u_hat).sum(dim=1))  # (N, out_caps, out_dim)
            if r < self.iterations - 1:
                b = b + (u_hat * v.unsqueeze(1)).sum(dim=-1)  # agreement
        return v
