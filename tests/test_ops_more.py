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


# ---------------------------------------------------------------- torch.einsum


class Einsum(nn.Module):
    """``eq`` applied to (conv3(x), conv5(x)) or (conv3(x), W) with a parameter ``W``."""

    def __init__(self, eq: str, with_weight: bool = False, nd: int = 1) -> None:
        super().__init__()
        conv = nn.Conv1d if nd == 1 else nn.Conv2d
        self.a = conv(2, 3, 3, padding=1)
        self.b = conv(2, 3, 5, padding=2)
        self.w = nn.Parameter(torch.ones(4, 3)) if with_weight else None
        self.eq = eq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.w if self.w is not None else self.b(x)
        return torch.einsum(self.eq, self.a(x), other)


@pytest.mark.parametrize("trace", TRACES)
def test_einsum_channel_mixing_is_pointwise_in_positions(trace: str) -> None:
    # out[b, d, l] = sum_c a[b, c, l] W[d, c]: per position, so the conv's 3 taps
    m = Einsum("bcl,dc->bdl", with_weight=True)
    r = rfscope.analyze(m, input_shape=(1, 2, 20), trace=trace).rf("output")
    assert r.status == "exact" and r.size == (3,)
    orc = Oracle(m, (1, 2, 20))
    for i in (4, 9, 15):
        assert orc.support((i,)) == r.pixels((i,))


def test_einsum_product_over_channels_is_the_union_of_the_operands() -> None:
    # out[b, l] = sum_c a[b, c, l] b[b, c, l]: position l of both branches (3 and 5 taps)
    m = Einsum("bcl,bcl->bl")

    class Unsq(nn.Module):  # the oracle reads (N, C, L): add a channel dim
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x).unsqueeze(1)

    r = rfscope.analyze(Unsq(), input_shape=(1, 2, 20)).rf("output")
    assert r.status == "exact" and r.size == (5,)
    orc = Oracle(Unsq(), (1, 2, 20))
    for i in (4, 9, 15):
        assert orc.support((i,)) == r.pixels((i,))


class CrossCovariance(nn.Module):
    """XCiT's pattern: a channel-by-channel Gram matrix over positions, applied back to the values."""

    def __init__(self, detach_gram: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 3, padding=1)
        self.detach_gram = detach_gram

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        g = torch.einsum("bcl,bdl->bcd", y, y)
        return torch.einsum("bcd,bdl->bcl", g.detach() if self.detach_gram else g, y)


@pytest.mark.parametrize("trace", TRACES)  # export keeps aten.einsum (equation, [operands])
def test_einsum_contracting_positions_is_global_without_local_rf(trace: str) -> None:
    shape = (1, 2, 16)
    rep = rfscope.analyze(CrossCovariance(), input_shape=shape, trace=trace)
    if trace != "make_fx":  # make_fx decomposes einsum into permutes and bmm
        gram = rep.rf("einsum")  # the Gram matrix: every position, and no local path at all
        assert gram.status == "global" and gram.local is None
    r = rep.rf("output")
    assert r.status == "global" and r.local is not None and r.local.status == "exact"
    orc = Oracle(CrossCovariance(), shape)
    for i in (0, 7, 15):
        assert orc.support((i,)) == ([*range(16)],)
    # the local path is y[:, :, l] scaled by the Gram matrix (an SE-like gate): with the gate
    # detached, the oracle measures it
    loc = Oracle(CrossCovariance(detach_gram=True), shape)
    for i in (3, 7, 12):
        assert loc.support((i,)) == r.local.pixels((i,))


def test_einsum_contracting_rows_keeps_columns_exact() -> None:
    # out[b, c, h, w] = sum_v a[b, c, h, w] b[b, c, v, w]: every row (v), the columns of both
    # branches at w (3 and 5 taps)
    m = Einsum("bchw,bcvw->bchw", nd=2)
    shape = (1, 2, 12, 14)
    r = rfscope.analyze(m, input_shape=shape).rf("output")
    assert r.status == "global" and r.dims[0].exact is None
    # the local path is a's own (3 taps along rows; b is summed over rows, so it adds only to columns):
    # local is not None, because a local path exists
    assert r.local is not None and r.local.status == "exact" and r.local.size == (3, 5)
    cols = r.dims[1].exact
    assert cols is not None
    orc = Oracle(m, shape)
    for idx in ((5, 6), (2, 9)):
        rows, got = orc.support(idx)
        assert rows == [*range(12)]
        assert got == cols.window(idx[1]).pixels()


@pytest.mark.parametrize(("eq", "why"), [
    ("...l,...l->...l", "einsum with ..."),
])
def test_einsum_unsupported_is_unknown_with_the_reason(eq: str, why: str) -> None:
    r = rfscope.analyze(Einsum(eq), input_shape=(1, 2, 10)).rf("output")
    assert r.status == "unknown" and why in (r.reason or ""), r.reason


def test_einsum_outer_over_positions_is_per_position() -> None:
    # bci,bcj->bij: unit (i, j) sees the 3-tap window of a at i and the 5-tap window of b at j, two
    # boxes along the one input axis (not one periodic window): exact per position, clipped to [0, 9]
    r = rfscope.analyze(Einsum("bci,bcj->bij"), input_shape=(1, 2, 10)).rf("output")
    assert r.status == "exact" and r.table is not None
    for i, j in [(2, 7), (0, 9), (5, 5)]:
        want = {p for p in range(i - 1, i + 2) if 0 <= p <= 9} | {p for p in range(j - 2, j + 3) if 0 <= p <= 9}
        got = {p for (lo, hi), in r.table.boxes((0, i, j)) for p in range(lo, hi + 1)}
        assert got == want, (i, j, r.table.boxes((0, i, j)))


def test_einsum_macs_count_every_index_combination() -> None:
    # bcl,dc->bdl: b*c*l*d multiply-accumulates (plus the conv's 3*2*3 per position, 20 positions)
    m = Einsum("bcl,dc->bdl", with_weight=True)
    rep = rfscope.analyze(m, input_shape=(1, 2, 20))
    assert rep.summary.macs == 1 * 3 * 20 * 4 + 20 * 3 * 2 * 3
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        m(torch.ones(1, 2, 20))
    assert fc.get_total_flops() // 2 == rep.summary.macs


# ---------------------------------------------------------------- recurrent layers


class Seq(nn.Module):
    """(N, C, L) -> a recurrent layer over L -> (N, H*D, L), or its final state ``h_n[-1]``."""

    def __init__(self, cls: type[nn.RNNBase], bidirectional: bool, batch_first: bool = True,
                 final: bool = False, layers: int = 1) -> None:
        super().__init__()
        self.rnn = cls(2, 3, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        self.batch_first, self.final = batch_first, final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.permute(0, 2, 1) if self.batch_first else x.permute(2, 0, 1)
        out, state = self.rnn(s)
        if self.final:
            h = state[0] if isinstance(self.rnn, nn.LSTM) else state  # (h_n, c_n) or h_n
            return h[-1]  # (N, H): no positional dim left
        return out.permute(0, 2, 1) if self.batch_first else out.permute(1, 2, 0)


RNNS = (nn.LSTM, nn.GRU, nn.RNN)


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_unidirectional_rnn_step_t_sees_0_to_t(cls: type[nn.RNNBase], batch_first: bool) -> None:
    # the truth, by the oracle and by random weights: step t sees [0, t] (grows with t), which is
    # neither one periodic window nor the whole axis: exact per position
    shape = (1, 2, 10)
    r = rfscope.analyze(Seq(cls, False, batch_first), input_shape=shape).rf("output")
    assert r.status == "exact" and r.table is not None, r
    orc = Oracle(Seq(cls, False, batch_first), shape)
    for t in (0, 4, 9):
        assert orc.support((t,)) == ([*range(t + 1)],)
        assert grad_support(Seq(cls, False, batch_first), shape, (0, 1, t)) == [[*range(t + 1)]]
        assert r.window((0, 1, t)) == ((0, t),)


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_bidirectional_rnn_is_global(cls: type[nn.RNNBase], batch_first: bool) -> None:
    shape = (1, 2, 10)
    r = rfscope.analyze(Seq(cls, True, batch_first), input_shape=shape).rf("output")
    assert r.status == "global" and r.local is None
    orc = Oracle(Seq(cls, True, batch_first), shape)
    for t in (0, 4, 9):
        assert orc.support((t,)) == ([*range(10)],)
        # random weights: a forward channel sees [0, t], a backward one [t, 9]; the unit, both
        assert grad_support(Seq(cls, True, batch_first), shape, (0, 1, t)) == [[*range(t + 1)]]
        assert grad_support(Seq(cls, True, batch_first), shape, (0, 4, t)) == [[*range(t, 10)]]


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_final_state_sees_the_whole_sequence(cls: type[nn.RNNBase], bidirectional: bool) -> None:
    shape = (1, 2, 10)
    m = Seq(cls, bidirectional, final=True, layers=2)
    r = rfscope.analyze(m, input_shape=shape).rf("output")
    assert r.status == "global" and r.local is None
    assert Oracle(m, shape).support(()) == ([*range(10)],)
    assert grad_support(Seq(cls, bidirectional, final=True, layers=2), shape, (0, 1)) == [[*range(10)]]


@pytest.mark.parametrize(("cls", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_rnn_macs_hand_formula(cls: type[nn.RNNBase], gates: int) -> None:
    # per step, layer and direction gates*H*(I + H): layer 0 has I=2, layer 1 reads both
    # directions (I = 2*H = 6); H=3, 10 steps, 2 directions, batch 1
    m = Seq(cls, True, layers=2)
    rep = rfscope.analyze(m, input_shape=(1, 2, 10))
    expected = (gates * 3 * (2 + 3) + gates * 3 * (6 + 3)) * 10 * 2
    assert rep.summary.macs == expected
    if cls is not nn.LSTM:  # PyTorch's counter sees GRU/RNN's matmuls; its CPU LSTM kernel counts 0
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            m(torch.ones(1, 2, 10))
        assert fc.get_total_flops() // 2 == expected


class RowLSTM(nn.Module):
    """Sequencer2D's row mixer: rows folded into the batch, a BiLSTM along each row."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y, _ = self.rnn(x.permute(0, 2, 3, 1).reshape(n * h, w, c))
        return y.reshape(n, h, w, 6).permute(0, 3, 1, 2)


def test_rnn_along_rows_folded_into_the_batch_keeps_rows_exact() -> None:
    # unit (h, w) sees row h only (the batch dim carries the rows), every column
    shape = (1, 2, 6, 8)
    r = rfscope.analyze(RowLSTM(), input_shape=shape).rf("output")
    rows = r.dims[0].exact
    assert r.status == "global" and rows is not None and r.dims[1].exact is None
    orc = Oracle(RowLSTM(), shape)
    for idx in ((3, 4), (0, 7), (5, 0)):
        got_rows, got_cols = orc.support(idx)
        assert got_rows == rows.window(idx[0]).pixels() and got_cols == [*range(8)]
