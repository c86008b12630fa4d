"""Convolutions: Conv1d/2d/3d, ConvTranspose1d/2d/3d and their functional forms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope import rf
from rfscope.context import OpContext, Unsupported
from rfscope.ops import local
from rfscope.registry import Registry
from rfscope.state import TensorRF


def _tup(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return t * n
    if len(t) != n:
        raise Unsupported(f"expected {n} values, got {v!r}")
    return t


def conv_geometry(ctx: OpContext) -> dict[str, Any]:
    """Kernel, stride, left padding, dilation, groups, transposed? for any conv call."""
    m = ctx.module
    if m is not None:
        assert isinstance(m, (nn.modules.conv._ConvNd,))
        n = len(m.kernel_size)
        k, s, d = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
        pad: Any = m.padding
        transposed = bool(m.transposed)
        groups = int(m.groups)
        weight_shape = tuple(m.weight.shape)
        out_pad = tuple(m.output_padding) if transposed else (0,) * n
    else:
        w = ctx.arg(1, "weight")
        if not isinstance(w, torch.Tensor):
            raise Unsupported("weight is not a tensor")
        weight_shape = tuple(w.shape)
        n = w.dim() - 2
        k = weight_shape[2:]
        transposed = ctx.node.target in _FUNC_T
        s = _tup(ctx.arg(3, "stride", 1), n)
        pad = ctx.arg(4, "padding", 0)
        if transposed:
            out_pad = _tup(ctx.arg(5, "output_padding", 0), n)
            groups = int(ctx.arg(6, "groups", 1))
            d = _tup(ctx.arg(7, "dilation", 1), n)
        else:
            out_pad = (0,) * n
            d = _tup(ctx.arg(5, "dilation", 1), n)
            groups = int(ctx.arg(6, "groups", 1))
    if isinstance(pad, str):
        if pad == "valid":
            left: Sequence[int] = (0,) * n
        elif pad == "same":
            # PyTorch puts the extra pixel on the right/bottom.
            left = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d, strict=False))
        else:
            raise Unsupported(f"padding={pad!r}")
    else:
        left = _tup(pad, n)
    return dict(k=tuple(k), s=tuple(s), p=tuple(left), d=tuple(d), groups=groups,
                transposed=transposed, weight_shape=weight_shape, n=n, output_padding=out_pad)


def _rf(ctx: OpContext) -> TensorRF:
    g = conv_geometry(ctx)
    n = g["n"]
    fns = {}
    for i in range(n):
        k, s, p, d = g["k"][i], g["s"][i], g["p"][i], g["d"][i]
        if g["transposed"]:
            fns[-n + i] = (lambda a, k=k, s=s, p=p, d=d: rf.conv_transpose(a, k, s, p, d))
        else:
            fns[-n + i] = (lambda a, k=k, s=s, p=p, d=d: rf.conv(a, k, s, p, d))
    return local(ctx, fns)


def _macs(ctx: OpContext) -> int:
    g = conv_geometry(ctx)
    ws = g["weight_shape"]
    kprod = math.prod(g["k"])
    if g["transposed"]:
        # every input element is multiplied by C_out/groups * k taps
        x = ctx.in_shape(0)
        c_in = ws[0]
        c_out_per_g = ws[1]
        return math.prod(x[:1]) * math.prod(x[2:]) * c_in * c_out_per_g * kprod
    out = ctx.out_shape
    c_in_per_g = ws[1]
    return math.prod(out) * c_in_per_g * kprod


_FUNC = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
_FUNC_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
           torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)


def register(reg: Registry) -> None:
    reg.add("conv", (nn.Conv1d, nn.Conv2d, nn.Conv3d, *set(_FUNC)), rf=_rf, macs=_macs)
    reg.add("conv_transpose", (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, *set(_FUNC_T)),
            rf=_rf, macs=_macs)
