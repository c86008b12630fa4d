"""Recurrent layers over a positional axis, per position (Sequencer2D's row and column LSTMs):
a unidirectional layer's step ``t`` sees steps ``0..t``, a bidirectional one every step, and the
final states every step of their sample.  Checked element by element against the gradient oracle
(``tests/oracle.py``); see rfscope/plugins/rnn.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from masks import claimed, global_mask, node_dims, periodic_unit
from oracle import Oracle

import rfscope


class RowRNN(nn.Module):
    """4x4 patches of a 16x16 image; an RNN along each row of the 4x4 grid (rows folded into the batch)."""

    def __init__(self, kind: type[nn.RNNBase], bidirectional: bool, batch_first: bool, cls: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.cls = cls
        self.embed = nn.Conv2d(1, 3, 4, 4)
        self.rnn = kind(3, 2, batch_first=batch_first, bidirectional=bidirectional)
        self.out = nn.Identity()
        self.final = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.embed(x).permute(0, 2, 3, 1).reshape(4, 4, 3)  # (rows, columns, features)
        if self.cls:  # an empty first step (a class token): a per-position table enters the RNN
            g = torch.cat([torch.zeros(4, 1, 3), g], dim=1)
        if not self.batch_first:
            g = g.transpose(0, 1)
        y, h = self.rnn(g)
        if isinstance(self.rnn, nn.LSTM):  # (h_n, c_n)
            h = h[0]
        return self.out(y), self.final(h)


def mask(boxes: list[tuple[tuple[int, int], ...]]) -> torch.Tensor:
    m = torch.zeros(16, 16, dtype=torch.bool)
    for box in boxes:
        m[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
    return m


def said(rep: rfscope.Report, name: str, idx: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """What rfscope says element ``idx`` of ``name`` sees, and whether that is per element (a table)
    or per unit (a periodic RF: every feature at that position)."""
    r = rep.rf(name)
    if r.table is not None:
        return claimed(r, idx, (16, 16)), True
    unit = periodic_unit(node_dims(rep, name), r, idx)[0]
    if r.status == "global":
        return global_mask(r, unit, (16, 16)), False
    assert r.status == "exact", r
    return claimed(r, idx, (16, 16), unit), False


def oracle(o: Oracle, y: torch.Tensor, idx: tuple[int, ...], per_element: bool) -> torch.Tensor:
    unit = y[idx] if per_element else y[idx[:-1]].sum()
    (g,) = torch.autograd.grad(unit, o.x, retain_graph=True)
    return g[0, 0].ne(0)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "both"])
@pytest.mark.parametrize("batch_first,cls", [(True, False), (False, False), (True, True)], ids=["bf", "tf", "cls"])
def test_rnn_steps_match_the_oracle(kind: type[nn.RNNBase], bidirectional: bool, batch_first: bool,
                                    cls: bool) -> None:
    model = RowRNN(kind, bidirectional, batch_first, cls).eval()
    shape = (1, 1, 16, 16)
    rep = rfscope.analyze(model, input_shape=shape)
    assert rep.rf("out").status != "unknown", rep.rf("out")
    o = Oracle(model, shape, module=["out", "final"])
    y = o.outs["out"]
    for row, col, feat in [(0, 0, 1), (1, 2, 0), (3, 3, 1), (2, 0, 3), (1, 1, 2)]:
        if feat >= y.shape[-1]:
            continue
        idx = (row, col, feat) if batch_first else (col, row, feat)
        # the expectation, written out: patches (row, first..last); features 2, 3 run backwards; with
        # the empty first step, step s reads patch column s - 1
        first, last = (col, 3) if feat >= 2 else (0, col)
        if cls:
            first, last = (max(col - 1, 0), 3) if feat >= 2 else (0, col - 1)
        boxes = [((4 * row, 4 * row + 3), (4 * first, 4 * last + 3))] if last >= first else []
        assert torch.equal(oracle(o, y, idx, True), mask(boxes))
        got, per_element = said(rep, "out", idx)
        assert per_element or not cls, rep.rf("out")  # a table: exact per feature
        assert torch.equal(got, oracle(o, y, idx, per_element)), (idx, rep.rf("out"))
    h = o.outs["final"]
    for row in range(4):
        assert torch.equal(oracle(o, h, (0, row, 0), True), mask([((4 * row, 4 * row + 3), (0, 15))]))
        got, per_element = said(rep, "final", (0, row, 0))
        assert torch.equal(got, oracle(o, h, (0, row, 0), per_element)), rep.rf("final")


def test_rnn_across_the_rows_of_a_flattened_grid_is_unknown() -> None:
    """Steps 0..t of a recurrence over 16 flattened tokens: after a row ends, the union is not a box."""

    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, 3, 4, 4)
            self.rnn = nn.GRU(3, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.embed(x).flatten(2).transpose(1, 2))[0]

    r = rfscope.analyze(Flat().eval(), input_shape=(1, 1, 16, 16)).rf("output")
    assert r.status == "unknown", r
