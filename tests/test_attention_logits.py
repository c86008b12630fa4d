"""Attention logits ``q @ k^T`` (a query dim and a key dim that both carry positions) meeting a
per-position table, as in timm's BoTNet, whose relative-position logits are built with pad /
flatten / slice (a table): element ``(i, j)`` sees token ``i``'s patch and token ``j``'s.  Checked
against the gradient oracle (``tests/oracle.py``); see docs/design.md §2b."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from oracle import Oracle

import rfscope


class Logits(nn.Module):
    """4x4 patches of a 16x16 image as 16 tokens; logits ``t @ t^T`` plus a rolled term (a table:
    row ``i`` also sees token ``i - 1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 2, 4, 4)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (1, 16, 2)
        logits = t @ t.transpose(1, 2)  # (1, 16, 16)
        rel = torch.roll(t.sum(-1, keepdim=True), 1, dims=1).expand(1, 16, 16)
        return self.out(logits + rel)


def patch(t: int) -> tuple[slice, slice]:
    i, j = divmod(t, 4)
    return slice(4 * i, 4 * i + 4), slice(4 * j, 4 * j + 4)


@pytest.mark.parametrize("i,j", [(0, 0), (0, 5), (3, 12), (15, 2), (7, 7)])
def test_logits_plus_table_element_sees_both_tokens(i: int, j: int) -> None:
    model = Logits().eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 16, 16))
    r = rep.rf("out")
    assert r.table is not None, r
    o = Oracle(model, (1, 1, 16, 16), module="out")
    (g,) = torch.autograd.grad(o.out[0, i, j], o.x)
    want = g[0, 0].ne(0)
    expect = torch.zeros(16, 16, dtype=torch.bool)  # the expectation, written out
    for t in (i, j, (i - 1) % 16):
        expect[patch(t)] = True
    assert torch.equal(want, expect)
    got = torch.zeros(16, 16, dtype=torch.bool)
    for box in r.table.boxes((0, i, j)):
        got[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
    assert torch.equal(got, want), r.table.boxes((0, i, j))


def test_timm_botnet_has_no_unknown_node() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("botnet26t_256", pretrained=False).eval()
    rep = rfscope.analyze(model, input_shape=(1, 3, 256, 256))
    unknown = [n for n, rec in rep.records.items() if rec.rf is not None and rec.rf.status == "unknown"]
    assert unknown == []
