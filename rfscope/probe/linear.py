"""Linearise a materialised graph so that its input gradient's support is the exact RF.

docs/design.md §5: positive constant weights (``1/fan_in`` here, so activations stay
near 1 and deep nets neither overflow nor underflow), zero biases; activations,
BatchNorm, Dropout, LayerNorm/GroupNorm/InstanceNorm → identity; max pooling →
a sum over the same window (a positive-weight pool with the same kernel, stride,
padding, dilation and ceil mode); ``a - b`` → ``a + b``, ``a / b`` (tensor) → ``a * b``
and ``-a`` → ``a`` so that no two positive paths can cancel.  With an all-ones
input every value and every gradient is then non-negative, so a pixel's gradient
is exactly zero iff no path reaches it.

This module is the probe's *independent* check of the static analysis, on purpose: it rewrites
the graph from the ops' own semantics and never asks the analyser's plugins (their RF, geometry
or traits), so a mistake in a plugin cannot hide in the check that is meant to catch it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["constant_param", "linearise"]


def constant_param(name: str, meta: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
    """The linearised value of a parameter: 0 for biases, ``1/fan_in`` for weight matrices, else 1."""
    leaf = name.rsplit(".", 1)[-1]
    if not meta.is_floating_point():
        if user is None:
            raise ValueError(f"integer parameter {name!r} is not in the model")
        return user
    if "bias" in leaf:
        return torch.zeros(meta.shape, dtype=torch.float64)
    if meta.dim() >= 2 and meta.shape[0] > 0:
        fan_in = max(1, meta.numel() // meta.shape[0])
        return torch.full(meta.shape, 1.0 / fan_in, dtype=torch.float64)
    return torch.ones(meta.shape, dtype=torch.float64)


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    """Stand-in for activations, norms and dropout: returns its input."""
    return x


class SumPool(nn.Module):
    """Positive-weight stand-in for max pooling: sums each window (same geometry, ceil mode too)."""

    def __init__(self, nd: int, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.nd = nd
        self.k = _tup(kernel_size, nd)
        self.s = _tup(stride if stride else kernel_size, nd)  # None / () / [] mean "= kernel"
        self.p = _tup(padding, nd)
        self.d = _tup(dilation, nd)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[self.nd - 1]
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        with torch.no_grad():
            ref = pool(x.detach().to("meta"), self.k, self.s, self.p, self.d, self.ceil_mode)  # output shape only
        pads: list[int] = []
        for i in reversed(range(self.nd)):
            pads += [self.p[i], self.p[i] + self.s[i]]  # extra right room for ceil_mode windows
        xp = F.pad(x, pads)
        batched = x.dim() == self.nd + 2
        if not batched:
            xp = xp.unsqueeze(0)
        c = xp.shape[1]
        w = torch.ones((c, 1, *self.k), dtype=x.dtype, device=x.device)
        y = conv(xp, w, None, self.s, 0, self.d, c)
        for i, n in enumerate(ref.shape[-self.nd:]):  # drop the extra right room
            y = y.narrow(y.dim() - self.nd + i, 0, n)
        return y if batched else y.squeeze(0)


def _tup(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        t = tuple(int(a) for a in v)
        return t * n if len(t) == 1 else t
    return (int(v),) * n


_ACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)
_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d,
    nn.RMSNorm, nn.modules.dropout._DropoutNd,
)

_IDENTITY_FUNCS: set[Any] = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.prelu, F.rrelu,
    F.elu, F.elu_, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.hardtanh_, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid, F.threshold, F.sigmoid, F.tanh,
    torch.sigmoid, torch.tanh, torch.sigmoid_, torch.tanh_, torch.clamp, torch.clip, torch.clamp_min,
    torch.clamp_max, torch.neg, operator.neg, operator.pos,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.dropout, torch.alpha_dropout, torch.feature_dropout,
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.rms_norm,
    torch.batch_norm, torch.layer_norm, torch.group_norm, torch.instance_norm,
}
_IDENTITY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clamp_max", "clamp_max_", "clip", "clip_", "neg", "neg_", "hardtanh", "hardtanh_",
}
_MAXPOOL_FUNCS: dict[Any, int] = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3,
}
_ADAPTIVE_MAX: dict[Any, Callable[..., Any]] = {
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}
_SUB = {operator.sub, torch.sub, torch.subtract}
_DIV = {operator.truediv, torch.div, torch.true_divide, torch.divide}
_ARITH = {operator.add, operator.mul, torch.add, torch.mul, operator.iadd, operator.imul} | _SUB | _DIV
_ARITH_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}

_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")

def _sum_pool_fn(nd: int) -> Callable[..., torch.Tensor]:
    def sum_pool(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kw = dict(zip(_POOL_ARGS, args, strict=False))
        kw.update(kwargs)
        kw.pop("return_indices", None)
        return SumPool(nd, **kw)(x)

    sum_pool.__name__ = f"sum_pool{nd}d"
    return sum_pool


_SUM_POOL_FNS = {n: _sum_pool_fn(n) for n in (1, 2, 3)}


# ATen graphs (``torch.export`` / ``make_fx`` trace paths), matched by overload packet
_aten = torch.ops.aten
_ATEN_IDENTITY = {
    _aten.relu, _aten.relu_, _aten.relu6, _aten.sigmoid, _aten.sigmoid_, _aten.tanh, _aten.tanh_, _aten.gelu,
    _aten.silu, _aten.silu_, _aten.mish, _aten.hardtanh, _aten.hardtanh_, _aten.hardswish, _aten.hardswish_,
    _aten.hardsigmoid, _aten.leaky_relu, _aten.leaky_relu_, _aten.elu, _aten.elu_, _aten.selu, _aten.celu,
    _aten.softplus, _aten.prelu, _aten.clamp, _aten.clamp_, _aten.clamp_min, _aten.clamp_min_, _aten.clamp_max,
    _aten.clip, _aten.neg, _aten.dropout, _aten.feature_dropout, _aten.alpha_dropout, _aten.batch_norm,
    _aten.layer_norm, _aten.group_norm, _aten.instance_norm, _aten.rms_norm, _aten.threshold,
}
#: ops returning a tuple whose item 0 is the normalised/dropped-out input
_ATEN_IDENTITY_TUPLE = {
    _aten.native_batch_norm, _aten._native_batch_norm_legit_no_training, _aten._native_batch_norm_legit,
    _aten.native_layer_norm, _aten.native_group_norm, _aten.native_dropout,
}
_ATEN_MAXPOOL = {_aten.max_pool1d: 1, _aten.max_pool2d: 2, _aten.max_pool3d: 3}
_ATEN_MAXPOOL_IDX = {_aten.max_pool2d_with_indices: 2, _aten.max_pool3d_with_indices: 3}
_ATEN_ADAPTIVE_MAX = {_aten.adaptive_max_pool1d: F.adaptive_avg_pool1d,
                      _aten.adaptive_max_pool2d: F.adaptive_avg_pool2d,
                      _aten.adaptive_max_pool3d: F.adaptive_avg_pool3d}
_ATEN_SUB = {_aten.sub, _aten.sub_, _aten.rsub}
_ATEN_DIV = {_aten.div, _aten.div_}
_ATEN_ARITH = {_aten.add, _aten.add_, _aten.mul, _aten.mul_} | _ATEN_SUB | _ATEN_DIV


def _identity_tuple(x: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
    """Stand-in for ATen norms that return ``(out, stats...)``: item 0 is the input."""
    return x, x, x


def _pair(fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    def both(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        y = fn(*args, **kwargs)
        return y, y  # (values, "indices"): only item 0 feeds the RF

    both.__name__ = f"{getattr(fn, '__name__', 'op')}_pair"
    return both


_ATEN_MAXPOOL_IDX_FNS = {n: _pair(_sum_pool_fn(n)) for n in (2, 3)}
_ATEN_ADAPTIVE_FNS = {k: _pair(v) for k, v in _ATEN_ADAPTIVE_MAX.items()}


def _add(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    return a + b


def _mul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    return a * b


def _replace_modules(gm: fx.GraphModule) -> None:
    swaps: list[tuple[str, nn.Module]] = []
    for name, m in gm.named_modules():
        if not name:
            continue
        if isinstance(m, _ACT_MODULES) or isinstance(m, _NORM_MODULES):
            swaps.append((name, nn.Identity()))
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and not m.return_indices:
            nd = 1 if isinstance(m, nn.MaxPool1d) else 2 if isinstance(m, nn.MaxPool2d) else 3
            swaps.append((name, SumPool(nd, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)))
        elif isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) \
                and not m.return_indices:
            cls = (nn.AdaptiveAvgPool1d if isinstance(m, nn.AdaptiveMaxPool1d)
                   else nn.AdaptiveAvgPool2d if isinstance(m, nn.AdaptiveMaxPool2d) else nn.AdaptiveAvgPool3d)
            swaps.append((name, cls(m.output_size)))  # type: ignore[arg-type]
    for name, new in swaps:
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, new)


def _is_node(a: Any) -> bool:
    return isinstance(a, fx.Node)


def _abs_scalars(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(abs(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a for a in args)


def _tensor_valued(n: fx.Node) -> bool:
    """The node computes a tensor (shape arithmetic such as ``x.shape[-1] - 2`` must stay as is)."""
    return isinstance(n.meta.get("val"), torch.Tensor)


def _linearise_aten(n: fx.Node, pk: Any) -> None:
    if pk in _ATEN_IDENTITY and n.args:
        n.target, n.args, n.kwargs = _identity, (n.args[0],), {}
    elif pk in _ATEN_IDENTITY_TUPLE and n.args:
        n.target, n.args, n.kwargs = _identity_tuple, (n.args[0],), {}
    elif pk in _ATEN_MAXPOOL:
        n.target = _SUM_POOL_FNS[_ATEN_MAXPOOL[pk]]
    elif pk in _ATEN_MAXPOOL_IDX:
        n.target = _ATEN_MAXPOOL_IDX_FNS[_ATEN_MAXPOOL_IDX[pk]]
    elif pk in _ATEN_ADAPTIVE_MAX:
        n.target, n.args, n.kwargs = _ATEN_ADAPTIVE_FNS[pk], tuple(n.args[:2]), {}
    elif pk in _ATEN_ARITH and _tensor_valued(n):
        args = _abs_scalars(n.args)
        if pk in _ATEN_SUB:
            n.target, n.args, n.kwargs = _add, args[:2], {}
        elif pk in _ATEN_DIV and len(args) >= 2 and _is_node(args[1]):
            n.target, n.args, n.kwargs = _mul, args[:2], {}
        else:
            n.args = args


def linearise(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite a materialised graph in place (see module docstring) and recompile it."""
    _replace_modules(gm)
    for n in list(gm.graph.nodes):
        pk = getattr(n.target, "overloadpacket", None) if n.op == "call_function" else None
        if pk is not None:
            _linearise_aten(n, pk)
        elif n.op == "call_function":
            t = n.target
            if t in _IDENTITY_FUNCS and n.args and _tensor_valued(n):
                n.target, n.args, n.kwargs = _identity, (n.args[0],), {}
            elif t in _MAXPOOL_FUNCS and not n.kwargs.get("return_indices", False) and not (
                    len(n.args) > 6 and n.args[6]):
                n.target = _SUM_POOL_FNS[_MAXPOOL_FUNCS[t]]
            elif t in _ADAPTIVE_MAX and not n.kwargs.get("return_indices", False):
                n.target = _ADAPTIVE_MAX[t]
                n.args = n.args[:2]
                n.kwargs = {k: v for k, v in n.kwargs.items() if k == "output_size"}
            elif t in _ARITH and _tensor_valued(n):
                if t in _SUB:
                    n.target = operator.add
                    n.kwargs = {}
                elif t in _DIV and len(n.args) >= 2 and _is_node(n.args[1]):
                    n.target = operator.mul
                    n.kwargs = {}
                n.args = _abs_scalars(n.args)
        elif n.op == "call_method":
            t = n.target
            if t in _IDENTITY_METHODS and n.args and _tensor_valued(n):
                n.op, n.target, n.args, n.kwargs = "call_function", _identity, (n.args[0],), {}
            elif t in _ARITH_METHODS and _tensor_valued(n):
                if t in ("sub", "sub_"):
                    n.op, n.target, n.kwargs = "call_function", operator.add, {}
                elif t in ("div", "div_") and len(n.args) >= 2 and _is_node(n.args[1]):
                    n.op, n.target, n.kwargs = "call_function", operator.mul, {}
                n.args = _abs_scalars(n.args)
    gm.graph.lint()
    gm.recompile()
    return gm
