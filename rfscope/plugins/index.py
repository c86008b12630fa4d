"""Ops that only move values around: roll, flip, repeat, gather, unfold (im2col), channel shuffle...

They have no periodic rule (a roll or a gather does not keep one lattice of windows); their
rule on per-position tables runs the op itself on the tables (:func:`rfscope.core.positions.index_rule`),
so each op's semantics are PyTorch's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import as_tuple
from rfscope.core.positions import as_table, index_rule, table_rule
from rfscope.core.registry import Method, Registry
from rfscope.core.state import TensorRF

M = Method

#: (name, targets) of the ops whose values are only moved around
INDEX_OPS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("roll", (torch.roll, M("roll"))),
    ("flip", (torch.flip, M("flip"), torch.fliplr, torch.flipud, M("fliplr"), M("flipud"))),
    ("repeat", (M("repeat"), torch.tile, M("tile"))),
    ("repeat_interleave", (torch.repeat_interleave, M("repeat_interleave"))),
    ("gather", (torch.gather, M("gather"), torch.take_along_dim, M("take_along_dim"),
                torch.index_select, M("index_select"))),
    ("tensor_unfold", (M("unfold"),)),
    ("unfold", (nn.Unfold, F.unfold)),
    ("channel_shuffle", (nn.ChannelShuffle, F.channel_shuffle, torch.channel_shuffle)),
    # a functionalised ``base[..., a:b] = src``: ``src`` replaces that region of ``base``
    ("slice_scatter", (torch.slice_scatter, M("slice_scatter"), torch.ops.aten.slice_scatter.default,
                       torch.select_scatter, M("select_scatter"), torch.ops.aten.select_scatter.default)),
)


@table_rule(mixing=True)
def _fold_table(ctx: OpContext) -> Any:
    """``F.fold`` / ``nn.Fold`` (col2im): each output pixel is the sum of the patch entries that
    land on it, so it sees the union of their boxes.  Which entries land where is PyTorch's own
    ``F.unfold`` of an image of output indices."""
    st, x = ctx.args[0], ctx.arg_values[0]
    if not isinstance(st, TensorRF) or not isinstance(x, torch.Tensor):
        raise Unsupported("fold of a constant")
    m: Any = ctx.module
    get = (lambda k, d=None: getattr(m, k)) if m is not None else (lambda k, d=None: ctx.param(k, d))
    size = as_tuple(get("output_size"), 2)
    kernel, dil = as_tuple(get("kernel_size"), 2), as_tuple(get("dilation", 1), 2)
    pad, stride = as_tuple(get("padding", 0), 2), as_tuple(get("stride", 1), 2)
    H, W = size
    index = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, 1, H, W)
    target = F.unfold(index, kernel, dil, pad, stride)[0].long().flatten() - 1  # (K*L,), -1: outside
    n_out = H * W
    counts = torch.bincount(target[target >= 0], minlength=n_out)
    width = max(1, int(counts.max()))
    order = torch.argsort(torch.where(target >= 0, target, n_out), stable=True)
    members = torch.full((n_out, width), len(target), dtype=torch.int64)  # len(target): the empty slot
    slot = torch.zeros(n_out, dtype=torch.int64)
    for j in order.tolist():  # at most K*L entries
        p = int(target[j])
        if p < 0:
            break
        members[p, slot[p]] = j
        slot[p] += 1
    t = as_table(ctx, st, x)
    batched = x.dim() == 3
    lead = tuple(x.shape[:1]) if batched else ()
    c_out = int(x.shape[-2]) // (kernel[0] * kernel[1])

    def gather(c: torch.Tensor) -> torch.Tensor:
        c = c.reshape(*lead, c_out, -1)
        c = torch.cat([c, torch.zeros_like(c[..., :1])], -1)
        return c[..., members]

    return t.apply(gather).reduce([-1], keepdim=False).apply(lambda c: c.reshape(*lead, c_out, H, W))


def register(reg: Registry) -> None:
    for name, targets in INDEX_OPS:
        reg.add(name, targets, table=index_rule)
    reg.add("fold", (nn.Fold, F.fold), table=_fold_table)
