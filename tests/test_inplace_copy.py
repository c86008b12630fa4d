"""In-place copies in ``torch.export`` graphs (``aten.copy_``: MViTv2's ``attn[:, :, k:, k:] = ...``):
the copy's value is its source broadcast to the target; a copy whose target (or a view of it) is
read again afterwards is ``unknown``, since the graph's data flow does not show that read seeing
the new values.  Checked against the gradient oracle (``tests/oracle.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from oracle import Oracle

import rfscope


class Overwrite(nn.Module):
    """``z[...] = roll(y) + z``: row ``i`` of the result sees rows ``i`` and ``i - 2`` (mod 8) of the conv."""

    def __init__(self, read_again: bool = False) -> None:
        super().__init__()
        self.read_again = read_again
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y * 1.0
        alias = z.view(1, 2, 64)
        z[:, :, :, :] = torch.roll(y, 2, dims=2) + z
        if self.read_again:  # a view taken before the copy, read after it
            return self.out(alias.view(1, 2, 8, 8) * 1.0)
        return self.out(z)


def mask_of(r: rfscope.RF, idx: tuple[int, ...]) -> torch.Tensor:
    got = torch.zeros(8, 8, dtype=torch.bool)
    if r.table is not None:
        for box in r.table.boxes(idx):
            got[tuple(slice(max(lo, 0), hi + 1) for lo, hi in box)] = True
        return got
    rows, cols = (torch.zeros(8, dtype=torch.bool) for _ in range(2))
    px = r.pixels(idx[2:])
    rows[[p for p in px[0] if 0 <= p < 8]] = True
    cols[[p for p in px[1] if 0 <= p < 8]] = True
    return rows[:, None] & cols[None, :]


def test_copy_into_a_tensor_matches_the_oracle() -> None:
    model = Overwrite().eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8), trace="export")
    assert any("copy_" in str(rec.target) for rec in rep.records.values())  # the case under test
    r = rep.rf("output")
    assert r.status == "exact", r
    o = Oracle(model, (1, 1, 8, 8), module="out")
    for i, j in [(0, 0), (1, 3), (2, 7), (5, 5), (7, 0)]:
        (g,) = torch.autograd.grad(o.out[0, 1, i, j], o.x, retain_graph=True)
        want = g[0, 0].ne(0)
        assert torch.equal(mask_of(r, (0, 1, i, j)), want), (i, j)


@pytest.mark.parametrize("trace", ["export"])
def test_copy_into_a_tensor_read_again_is_unknown(trace: str) -> None:
    model = Overwrite(read_again=True).eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8), trace=trace)
    r = rep.rf("output")
    if r.status == "exact":  # the graph's data flow shows the read after the copy: then it must be right
        o = Oracle(model, (1, 1, 8, 8), module="out")
        (g,) = torch.autograd.grad(o.out[0, 1, 2, 7], o.x)
        assert torch.equal(mask_of(r, (0, 1, 2, 7)), g[0, 0].ne(0))
    else:
        assert r.status == "unknown" and "in place" in (r.reason or ""), r


class Scatter(nn.Module):
    """A functionalised slice / select assignment (``torch.slice_scatter``, ``torch.select_scatter``,
    as ``make_fx`` and export graphs write ``base[:, :, 1:] = src``): rows 1.. (or row 2) take the
    conv rolled by one column."""

    def __init__(self, select: bool) -> None:
        super().__init__()
        self.select = select
        self.conv = nn.Conv2d(1, 2, 2, stride=2)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        r = torch.roll(y, 1, 3)
        if self.select:
            return self.out(torch.select_scatter(y, r[:, :, 2], dim=2, index=2))
        return self.out(torch.slice_scatter(y, r[:, :, 1:], dim=2, start=1))


@pytest.mark.parametrize("select", [False, True], ids=["slice", "select"])
def test_scatter_into_a_region_matches_the_oracle(select: bool) -> None:
    model = Scatter(select).eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8))
    r = rep.rf("out")
    assert r.status == "exact", r
    o = Oracle(model, (1, 1, 8, 8), module="out")
    for i in range(4):
        for j in range(4):
            (g,) = torch.autograd.grad(o.out[0, 1, i, j], o.x, retain_graph=True)
            assert torch.equal(mask_of(r, (0, 1, i, j)), g[0, 0].ne(0)), (i, j)
