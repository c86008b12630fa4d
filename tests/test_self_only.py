"""Ops whose output holds their first argument's values (``x.to(...)``, ``x.type_as(other)``,
``clone``): the state is that argument's, never ``other``'s, on the periodic path and on
per-position tables (timm's ``vit_*_reg1_gap`` models call ``scale.type_as(q)`` on a constant;
the table rule used to union the two and raised)."""

from __future__ import annotations

import torch
import torch.nn as nn
from oracle import Oracle

import rfscope


class TypeAs(nn.Module):
    def __init__(self, table: bool) -> None:
        super().__init__()
        self.table = table
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("scale", torch.tensor(2.0))
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.table:
            y = torch.roll(y, 1, dims=2)  # a per-position table
        s = self.scale.type_as(y)  # a constant, whatever y is
        return self.out(y.type_as(x) + s)


def test_constant_type_as_input_stays_constant() -> None:
    rep = rfscope.analyze(TypeAs(False).eval(), input_shape=(1, 1, 8, 8))
    assert rep.records["type_as"].rf is None  # the constant does not depend on the input
    assert rep.rf("out").size == (3, 3)


def test_type_as_on_a_table_keeps_its_table() -> None:
    model = TypeAs(True).eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8))
    assert not rep.errors, rep.errors
    r = rep.rf("out")
    assert r.table is not None, r
    o = Oracle(model, (1, 1, 8, 8), module="out")
    for i, j in [(0, 0), (3, 4), (7, 7)]:
        (g,) = torch.autograd.grad(o.out[0, 0, i, j], o.x, retain_graph=True)
        got = torch.zeros(8, 8, dtype=torch.bool)
        for box in r.table.boxes((0, 0, i, j)):
            got[tuple(slice(max(lo, 0), hi + 1) for lo, hi in box)] = True
        assert torch.equal(got, g[0, 0].ne(0)), (i, j)
