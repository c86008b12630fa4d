"""Ops that only move values around: roll, flip, repeat, gather, unfold (im2col), channel shuffle...

They have no periodic rule (a roll or a gather does not keep one lattice of windows); their
rule on per-position tables runs the op itself on the tables (:func:`rfscope.core.positions.index_rule`),
so each op's semantics are PyTorch's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.positions import index_rule
from rfscope.core.registry import Method, Registry

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
)


def register(reg: Registry) -> None:
    for name, targets in INDEX_OPS:
        reg.add(name, targets, table=index_rule)
