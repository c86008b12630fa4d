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


_SLIDING_MODULES = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                    nn.modules.pooling._LPPoolNd)
_SLIDING_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                      F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                      F.lp_pool1d, F.lp_pool2d}


_ATEN_SLIDING = {f"aten::{n}" for n in (
    "convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d")}


def _aten_sliding(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is not None and getattr(schema, "name", None) in _ATEN_SLIDING


def _read_by_sliding_windows_only(ctx: OpContext) -> bool:
    """Every user of the padded tensor is a conv or pool (TF-style 'same' padding).  The periodic
    form gives a padded position the window of a unit past the border, the RF literature's
    convention for what a sliding window reads there; any other reader (a reshape into windows, a
    slice, the output itself) must see that a padded position sees nothing: the per-position form
    says so (docs/design.md §2b, "Borders")."""
    node = ctx.origin or ctx.node
    users = list(node.users)
    if not users:
        return False
    root = node.graph.owning_module
    for u in users:
        if u.op == "call_module" and root is not None:
            try:
                sliding = isinstance(root.get_submodule(str(u.target)), _SLIDING_MODULES)
            except AttributeError:
                sliding = False
        else:
            sliding = u.op == "call_function" and (u.target in _SLIDING_FUNCTIONS or _aten_sliding(u.target))
        if not sliding:
            return False
    return True


def _rf(ctx: OpContext) -> TensorRF:
    pads = _pads(ctx)
    if len(pads) % 2:
        raise Unsupported(f"odd-length pad {pads}")
    dims = ctx.first.dims
    padded = [len(dims) - 1 - i for i in range(len(pads) // 2) if pads[2 * i] > 0 or pads[2 * i + 1] > 0]
    # A unit is one position along the positional dims, and sees the union over the other dims (its
    # channels): padding only those (a residual branch's channels, MONAI's HighResNet) adds no unit.
    # Without a positional dim every element is a unit (tokens after a global op): a padded one
    # sees nothing (CoaT's class row).
    adds = bool(padded) and (any(dims[d] is not None for d in padded if d >= 0)
                             or all(t is None for t in dims))
    if adds and not _read_by_sliding_windows_only(ctx):
        raise Unsupported("padded positions read by an op other than a conv or pool (they see nothing)")
    fns = {}
    for i in range(len(pads) // 2):
        left = pads[2 * i]
        fns[-1 - i] = (lambda a, left=left: shift(a, left))
    return local(ctx, fns)


def register(reg: Registry) -> None:
    reg.add("pad", (*_PAD_MODULES, F.pad), rf=_rf, table=index_rule)
