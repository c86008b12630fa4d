"""Plugins for F.normalize, torch.einsum and recurrent layers, checked against gradients.

Two independent references, never rfscope's own numbers:

* ``Oracle`` (tests/oracle.py): positive constant weights, all-ones input, activations and norms
  the identity; the gradient support of one unit is the set of positions it sees.
* ``grad_support``: the real op (no identity replacement) with random weights and a random input,
  so nothing cancels by symmetry (``F.normalize`` of an all-ones input has a zero channel-summed
  gradient); the gradient support of one output element is the set of positions it depends on.
"""

from __future__ import annotations

from collections.abc import Sequence

import oracle
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import Oracle

import rfscope


def grad_support(model: nn.Module, shape: Sequence[int], index: Sequence[int], seed: int = 0) -> list[list[int]]:
    """Per tensor dim >= 2 of the input, the positions the output element ``index`` depends on."""
    torch.manual_seed(seed)
    m = model.double().eval()
    for p in m.parameters():
        with torch.no_grad():
            p.uniform_(0.5, 1.5)
    x = torch.rand(*shape, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    out = m(x)
    y = out if isinstance(out, torch.Tensor) else out[0]
    (g,) = torch.autograd.grad(y[tuple(index)], x)
    nz = g != 0
    res = []
    for a in range(2, x.dim()):
        other = [d for d in range(x.dim()) if d != a]
        res.append([int(i) for i in torch.nonzero(nz.any(dim=other) if other else nz).flatten()])
    return res


# ---------------------------------------------------------------- F.normalize


class Normalize(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.conv(x), dim=self.dim)


# export/make_fx graphs spell it linalg_vector_norm -> clamp_min -> expand_as -> div
TRACES = ("auto", "export", "make_fx")


@pytest.mark.parametrize("trace", TRACES)
def test_normalize_over_channels_is_pointwise_in_positions(trace: str) -> None:
    shape = (1, 2, 16)
    r = rfscope.analyze(Normalize(1), input_shape=shape, trace=trace).rf("output")
    assert r.status == "exact"
    for i in (3, 8, 12):  # central units: borders clip the gradient support
        for c in range(3):
            assert grad_support(Normalize(1), shape, (0, c, i)) == list(r.pixels((i,))), (i, c)


@pytest.mark.parametrize("trace", TRACES)
def test_normalize_over_positions_is_global_keeping_the_local_rf(trace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (1, 2, 16)
    r = rfscope.analyze(Normalize(-1), input_shape=shape, trace=trace).rf("output")
    assert r.status == "global" and r.local is not None and r.local.status == "exact"
    for i in (0, 7):  # the real op: every unit depends on every position
        assert grad_support(Normalize(-1), shape, (0, 0, i)) == [list(range(16))]
    # with the norm taken as the identity (as the oracle does for norm layers), the local paths
    monkeypatch.setattr(oracle, "_IDENTITY", oracle._IDENTITY | {F.normalize})
    orc = Oracle(Normalize(-1), shape)
    for i in (3, 7, 12):
        assert orc.support((i,)) == r.local.pixels((i,))
