"""Convolutions: Conv1d/2d/3d, ConvTranspose1d/2d/3d and their functional forms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.geometry import Geometry
from rfscope.core.initview import InitContext, WeightView, module_view
from rfscope.core.ops import as_tuple, local
from rfscope.core.positions import sliding_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF, make_global


def conv_geometry(ctx: OpContext) -> Geometry:
    """The geometry of any conv call: a module's attributes, or a functional call's arguments."""
    return ctx.once("geometry", _conv_geometry)  # type: ignore[no-any-return]  # RF, MACs and record ask for it


def _conv_geometry(ctx: OpContext) -> Geometry:
    m = ctx.module
    if m is not None:
        assert isinstance(m, nn.modules.conv._ConvNd)
        n = len(m.kernel_size)
        k, s, d = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
        pad: Any = m.padding
        transposed = bool(m.transposed)
        groups = int(m.groups)
        weight_shape = tuple(m.weight.shape)
        out_pad = tuple(m.output_padding) if transposed else (0,) * n
    else:
        w = ctx.param("weight")
        if not isinstance(w, torch.Tensor):
            raise Unsupported("weight is not a tensor")
        weight_shape = tuple(w.shape)
        n = w.dim() - 2
        k = weight_shape[2:]
        transposed = ctx.node.target in _FUNC_T
        s = as_tuple(ctx.param("stride", 1), n)
        pad = ctx.param("padding", 0)
        out_pad = as_tuple(ctx.param("output_padding", 0), n) if transposed else (0,) * n
        groups = int(ctx.param("groups", 1))
        d = as_tuple(ctx.param("dilation", 1), n)
    if isinstance(pad, str):
        if pad == "valid":
            left: Sequence[int] = (0,) * n
        elif pad == "same":
            # PyTorch puts the extra pixel on the right/bottom.
            left = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d, strict=False))
        else:
            raise Unsupported(f"padding={pad!r}")
    else:
        left = as_tuple(pad, n)
    return Geometry("conv", tuple(k), tuple(s), tuple(left), tuple(d), groups=groups, transposed=transposed,
                    output_padding=out_pad, weight_shape=weight_shape)


def _rf(ctx: OpContext) -> TensorRF:
    g = conv_geometry(ctx)
    op = rf.conv_transpose if g.transposed else rf.conv
    fns = {-g.n + i: partial(_axis, op, k, s, p, d)
           for i, (k, s, p, d) in enumerate(zip(g.kernel, g.stride, g.padding, g.dilation, strict=True))}
    st = ctx.first
    ch = st.dims[-g.n - 1] if len(st.dims) > g.n else None
    if isinstance(ch, int):  # positions in the channel dim (a channels-last input fed as is): all are mixed
        dims = list(st.dims)
        dims[-g.n - 1] = None
        st = make_global(st.with_dims(dims), [ch], keep_local=False)
    return local(ctx, fns, state=st)


def _axis(op: Any, k: int, s: int, p: int, d: int, a: rf.Axis) -> rf.Axis:
    return op(a, k, s, p, d)  # type: ignore[no-any-return]


def _macs(ctx: OpContext) -> int:
    g = conv_geometry(ctx)
    ws = g.weight_shape
    assert ws is not None
    kprod = math.prod(g.kernel)
    if g.transposed:
        # every input element is multiplied by C_out/groups * k taps
        x = ctx.in_shape(0)
        return math.prod(x[:1]) * math.prod(x[2:]) * ws[0] * ws[1] * kprod
    return math.prod(ctx.out_shape) * ws[1] * kprod


_FUNC = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
_FUNC_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
           torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)


def _init_view(transposed: bool) -> Any:
    """The init check's view of a conv call: the module's weight, or a functional call's ``get_attr`` weight."""

    def view(ctx: InitContext) -> WeightView | None:
        if ctx.module is not None:
            return module_view(ctx)
        w = ctx.tensor(ctx.param("weight"))
        if w is None:
            return None  # a computed weight (e.g. weight standardisation): not an init
        b = ctx.tensor(ctx.param("bias"))
        g = ctx.param("groups", 1)
        return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b), 1 if transposed else 0,
                          0 if transposed else 1, int(g) if isinstance(g, int) else 1)

    return view


def register(reg: Registry) -> None:
    reg.add("conv", (nn.Conv1d, nn.Conv2d, nn.Conv3d, *set(_FUNC)), rf=_rf, macs=_macs, geometry=conv_geometry,
            table=sliding_rule(conv_geometry, True), init_view=_init_view(False))
    reg.add("conv_transpose", (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, *set(_FUNC_T)),
            rf=_rf, macs=_macs, geometry=conv_geometry, table=sliding_rule(conv_geometry, True),
            init_view=_init_view(True))
