"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) over a positional axis.

The time axis is dim 1 of a batched ``batch_first`` input, else dim 0.  When it indexes input
positions:

* a *bidirectional* layer's output step sees every step: ``global`` along that axis (no local
  RF: every path to another step goes through the recurrence);
* a *unidirectional* one's step ``t`` sees steps ``[0, t]``, a window that grows with ``t``:
  not a periodic RF, so the periodic rule says ``unknown`` and the per-position rule
  (:func:`_rnn_table`) states each step's window exactly (the union of the boxes of steps
  ``0..t``, checked to be a box);
* the final states ``h_n`` (and ``c_n``) summarise the whole sequence in any direction: ``global``.

Features are mixed (an input feature dim tagged positional becomes ``global``); the batch dim
keeps its tag (Sequencer2D folds rows into the batch).  MACs per step, layer and direction:
``gates * H * (I + H)`` (gates 4 LSTM, 3 GRU, 1 RNN; ``I`` the layer's input size, ``H*D`` above
the first layer), plus ``P * H`` for an LSTM projection of size ``P`` (then ``P`` replaces ``H``
in the recurrent product).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import axes_of
from rfscope.core.positions import as_table, table_rule
from rfscope.core.registry import Registry
from rfscope.core.state import DimTag, TensorRF, make_global, unknown

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _module(ctx: OpContext) -> nn.RNNBase:
    m = ctx.module
    if not isinstance(m, nn.RNNBase):
        raise Unsupported("not a recurrent module")
    return m


def _sequence(ctx: OpContext) -> tuple[nn.RNNBase, TensorRF, torch.Tensor]:
    """The module, the input's state and value; raises for what the rules do not handle."""
    m = _module(ctx)
    x, v = ctx.state(0, "input"), ctx.arg(0, "input")
    if not isinstance(x, TensorRF) or not isinstance(v, torch.Tensor):
        raise Unsupported("recurrent layer over a PackedSequence or a constant")
    hx = ctx.state(1, "hx")
    if any(isinstance(h, TensorRF) for h in (hx if isinstance(hx, tuple) else (hx,))):
        raise Unsupported("recurrent layer with an initial state that depends on the input")
    return m, x, v


def _rnn_rf(ctx: OpContext) -> tuple[Any, Any]:
    m, x, _ = _sequence(ctx)
    nd = len(x.dims)
    batched = nd == 3
    t_dim = 1 if (m.batch_first and batched) else 0
    b_dim = (0 if m.batch_first else 1) if batched else None
    time, feat = x.dims[t_dim], x.dims[-1]
    mixed = make_global(x, axes_of([feat]), keep_local=False)  # features are mixed
    out_dims: list[DimTag] = list(x.dims[:-1]) + [None]
    if x.reason is not None:
        out: TensorRF = x.with_dims(out_dims)
    elif time is None:
        out = mixed.with_dims(out_dims)
    elif m.bidirectional:
        out = make_global(mixed, axes_of([time]), keep_local=False).with_dims(out_dims)
    else:
        out = unknown(out_dims, "causal recurrence: step t sees [0, t], a window growing with t "
                                "(neither a periodic RF nor the whole axis)")
    fin = make_global(mixed, axes_of([time]), keep_local=False)
    fin_dims: list[DimTag] = [None, x.dims[b_dim], None] if b_dim is not None else [None, None]
    final = x.with_dims(fin_dims) if x.reason is not None else fin.with_dims(fin_dims)
    if isinstance(ctx.out, tuple) and isinstance(ctx.out[1], tuple):  # LSTM: (output, (h_n, c_n))
        return out, (final, final)
    return out, final


@table_rule(mixing=True)
def _rnn_table(ctx: OpContext) -> Any:
    """Per position: step ``t`` sees steps ``0..t`` (unidirectional) or every step (bidirectional),
    each step all features; the final states see every step of their sample."""
    m, x, v = _sequence(ctx)
    t = as_table(ctx, x, v)
    batched = v.dim() == 3
    t_dim = 1 if (m.batch_first and batched) else 0
    f_dim = v.dim() - 1
    t = t.reduce([f_dim], keepdim=True)
    out_shape = tuple(ctx.out[0].shape)
    out = t.prefix(t_dim).union(shape=out_shape)
    if m.bidirectional:  # features H.. run backwards: step t sees t..L-1 there
        back = t.apply(lambda c: c.flip(t_dim)).prefix(t_dim).apply(lambda c: c.flip(t_dim))
        h = out_shape[-1] // 2
        fwd_only = torch.arange(out_shape[-1]) < h
        out = out.where_dim(f_dim, fwd_only).union(back.union(shape=out_shape).where_dim(f_dim, ~fwd_only))
    whole = t.reduce([t_dim], keepdim=True)  # (B, 1, 1), (1, B, 1) or (1, 1): per sample

    fin = whole.apply(lambda c: c.reshape(1, -1, 1) if batched else c.reshape(1, 1))  # (layers x D, B, H)
    finals = ctx.out[1]
    if isinstance(finals, tuple):  # LSTM: (h_n, c_n)
        return out, tuple(fin.union(shape=tuple(f.shape)) for f in finals)
    return out, fin.union(shape=tuple(finals.shape))


def _rnn_macs(ctx: OpContext) -> int:
    m = _module(ctx)
    v = ctx.arg(0, "input")
    if not isinstance(v, torch.Tensor):
        raise Unsupported("input is not a tensor (a PackedSequence): its steps are not known")
    gates = next((g for cls, g in _GATES.items() if isinstance(m, cls)), 1)
    batched = v.dim() == 3
    steps = int(v.shape[1 if (m.batch_first and batched) else 0])
    n = int(v.shape[0 if m.batch_first else 1]) if batched else 1
    d = 2 if m.bidirectional else 1
    h = m.hidden_size
    p = getattr(m, "proj_size", 0) or 0
    r = p or h
    total = 0
    for layer in range(m.num_layers):
        i = m.input_size if layer == 0 else r * d
        total += gates * h * (i + r) + p * h
    return total * steps * d * n


def register(reg: Registry) -> None:
    reg.add("rnn", (nn.LSTM, nn.GRU, nn.RNN), rf=_rnn_rf, macs=_rnn_macs, table=_rnn_table)
