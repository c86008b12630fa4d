"""Normalisation layers.  Statistics over spatial positions make a layer global
(GroupNorm, InstanceNorm, LayerNorm over spatial dims); the direct path keeps the
local RF, reported as ``local``.  LayerNorm over channels only is pointwise."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext
from rfscope.core.ops import axes_of
from rfscope.core.positions import contract_rule, group_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF, make_global
from rfscope.core.traits import NORM


def _group_rf(ctx: OpContext) -> TensorRF:
    """Statistics over every position of a channel (InstanceNorm) or of a group of channels (GroupNorm)."""
    st = ctx.first
    m: Any = ctx.module
    unbatched = isinstance(m, nn.modules.instancenorm._InstanceNorm) and len(st.dims) == m._get_no_batch_dim()
    over = st.dims[1:] if unbatched else st.dims[2:]  # an unbatched InstanceNorm input is (C, *positions)
    if not isinstance(m, nn.modules.instancenorm._InstanceNorm) and ctx.node.target is not F.instance_norm:
        over = st.dims[1:]  # GroupNorm also mixes the channels of a group
    return make_global(st, axes_of(over), keep_local=True)


def _layer_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    if ctx.module is not None:
        m: Any = ctx.module
        n = len(m.normalized_shape)
    else:
        shp = ctx.param("normalized_shape")
        n = 1 if isinstance(shp, int) else len(shp)
    return make_global(st, axes_of(st.dims[-n:]), keep_local=True)


def _lrn_rf(ctx: OpContext) -> TensorRF:
    return ctx.first  # normalises across neighbouring channels only


_GROUP = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, F.group_norm, F.instance_norm,
          torch.group_norm)


def _layer_n(ctx: OpContext) -> int:
    m: Any = ctx.module
    shape = m.normalized_shape if m is not None else ctx.param("normalized_shape")
    return 1 if isinstance(shape, int) else len(shape)


def _group_dims(ctx: OpContext, nd: int) -> list[int]:
    return list(range(1, nd))  # per sample: the group's channels and every position


def register(reg: Registry) -> None:
    reg.add("group_norm", _GROUP, rf=_group_rf, traits={NORM}, table=group_rule)
    reg.add("layer_norm", (nn.LayerNorm, F.layer_norm, torch.layer_norm, nn.RMSNorm, F.rms_norm), rf=_layer_rf,
            traits={NORM}, table=contract_rule(_layer_n))
    reg.add("local_response_norm", (nn.LocalResponseNorm, F.local_response_norm), rf=_lrn_rf, traits={NORM})
