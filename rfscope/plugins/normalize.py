"""``F.normalize``: divide by the p-norm over ``dim`` (default 1).

Over a channel/feature dim the op is pointwise in positions (state unchanged).  Over a
positional dim every unit depends on the whole axis through the norm, so that axis becomes
``global``; the direct path ``x_i`` keeps its local RF (like a norm over space).
"""

from __future__ import annotations

import torch.nn.functional as F

from rfscope.core.context import OpContext
from rfscope.core.ops import global_over, norm_dim
from rfscope.core.positions import softmax_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF
from rfscope.core.traits import NORM


def _normalize_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    dim = ctx.param("dim", 1)
    dims = [dim] if isinstance(dim, int) else list(dim)
    nd = len(st.dims)
    return global_over(st, [norm_dim(int(d), nd) for d in dims], keep_local=True)


def register(reg: Registry) -> None:
    reg.add("normalize", (F.normalize,), rf=_normalize_rf, traits={NORM}, table=softmax_rule)
