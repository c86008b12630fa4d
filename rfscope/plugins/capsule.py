"""Capsule layers: :class:`rfscope.models.capsule.DigitCaps` (dynamic routing by agreement).

Every output capsule is a routed sum over *all* input capsules (the coupling
coefficients are a softmax over the outputs, and the agreement updates read every
prediction), so along every spatial axis that the input capsule index enumerates,
the output is global, with no spatially local path (``local`` is ``None``).
Registering the class also keeps it a leaf for the tracer, so the routing loop is
not unrolled into dozens of elementwise nodes.  When the input capsules' positions do not see
the whole input (a primary-capsule conv whose windows miss the last row), the output sees their
union, not the input: the table rule says so (every output element, the union over all input
capsules and their dims).  :class:`~rfscope.models.capsule.PrimaryCaps`
needs no plugin: it is a conv and reshapes, traced through, and keeps the conv's
local RF.
"""

from __future__ import annotations

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import axes_of
from rfscope.core.positions import as_table, table_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF, make_global
from rfscope.core.table import Table
from rfscope.models.capsule import DigitCaps


def _digitcaps_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    if len(st.dims) != 3:
        raise Unsupported(f"expected (N, in_caps, in_dim) input, got {len(st.dims)} dims")
    n, caps, dim = st.dims
    if dim is not None and axes_of([dim]):
        raise Unsupported("the capsule vector dim holds spatial positions")
    out = st.with_dims([n, None, None])
    return make_global(out, axes_of([caps]), keep_local=False)


@table_rule(mixing=True)
def _digitcaps_table(ctx: OpContext) -> Table:
    t = as_table(ctx, ctx.first, ctx.arg_values[0])
    if len(t.shape) != 3:
        raise Unsupported(f"expected (N, in_caps, in_dim) input, got {len(t.shape)} dims")
    return t.reduce([1, 2], keepdim=True).union(shape=ctx.out_shape)


def _digitcaps_macs(ctx: OpContext) -> int:
    m = ctx.module
    assert isinstance(m, DigitCaps)
    batch = ctx.in_shape(0)[0]
    pairs = batch * m.in_caps * m.out_caps
    # predictions W[i,j] @ u_i; per iteration the weighted sum, and (all but the last) the agreement
    return pairs * m.out_dim * m.in_dim + pairs * m.out_dim * (2 * m.iterations - 1)


def register(reg: Registry) -> None:
    reg.add("capsule", (DigitCaps,), rf=_digitcaps_rf, macs=_digitcaps_macs, table=_digitcaps_table)
