"""Padding layers and ``F.pad``: the left/top pad moves the effective padding."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import local
from rfscope.core.positions import index_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF

_PAD_MODULES = tuple(
    getattr(nn, name)
    for name in (
        "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
        "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d",
        "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d",
    )
    if hasattr(nn, name)
)


def shift(a: rf.Axis, left: int) -> rf.Axis:
    """Pad ``left`` units before the first one (negative: crop)."""
    return rf.resample(a, lambda i: [i - left], 1, 1)


def _pads(ctx: OpContext) -> tuple[int, ...]:
    if ctx.module is not None:
        m: Any = ctx.module
        return tuple(int(p) for p in m.padding)  # (left, right, top, bottom, ...)
    p = ctx.param("pad")
    return tuple(int(x) for x in p)


def _rf(ctx: OpContext) -> TensorRF:
    pads = _pads(ctx)
    if len(pads) % 2:
        raise Unsupported(f"odd-length pad {pads}")
    fns = {}
    for i in range(len(pads) // 2):
        left = pads[2 * i]
        fns[-1 - i] = (lambda a, left=left: shift(a, left))
    return local(ctx, fns)


def register(reg: Registry) -> None:
    reg.add("pad", (*_PAD_MODULES, F.pad), rf=_rf, table=index_rule)
