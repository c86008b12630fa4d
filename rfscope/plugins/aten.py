"""ATen-level ops, for the graphs of the fallback tracers (``torch.export``, ``make_fx``).

Plugins are keyed by the real ``torch.ops.aten`` overloads that appear in those
graphs.  Most translate the ATen call into the equivalent torch-level call
(``aten.convolution`` -> ``F.conv2d`` or ``F.conv_transpose2d``, ``aten.slice`` ->
``x[..., a:b:c]``, ``aten.addmm`` -> ``torch.matmul`` ...) and ask the plugin
registered for *that* call, so both tracing paths share one formula per op and
give the same RF, MACs, geometry and initialisation-check view; a delegating
registration states the torch-level plugin's traits (:mod:`rfscope.core.traits`).
Elementwise and copy-like ops use :mod:`rfscope.core.ops` directly, with the traits of
their torch-level counterparts in :mod:`rfscope.plugins.pointwise`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.geometry import Geometry
from rfscope.core.initview import InitContext, WeightView
from rfscope.core.ops import elementwise, norm_dim, reduce_dims, same_state, self_state
from rfscope.core.positions import elementwise_rule, index_rule, self_rule
from rfscope.core.registry import Method, Plugin, Registry
from rfscope.core.state import CONST, TensorRF, make_global
from rfscope.core.traits import CHANNELWISE, FLATTEN, NORM, POINTWISE, RELU

aten = torch.ops.aten


@dataclass(frozen=True)
class Lit:
    """A literal argument of the translated call (its state is ``CONST``)."""

    value: Any


#: an argument of the translated call: the name of an ATen schema argument, or a literal
Ref = str | Lit


@dataclass
class Call:
    """The torch-level call equivalent to one ATen call.

    ``out_index`` picks one output of a multi-output ATen op as the translated
    call's output; ``wrap(state, ctx)`` turns the translated call's state back into
    the ATen op's (e.g. adds the states of batch-norm statistics).
    """

    target: Any
    args: list[Ref]
    kwargs: dict[str, Ref] = field(default_factory=dict)
    out_index: int | None = None
    wrap: Callable[[Any, OpContext], Any] | None = None


class Args:
    """An ATen call's arguments by schema name (positional or keyword, defaults filled in)."""

    def __init__(self, ctx: OpContext) -> None:
        self.ctx = ctx
        schema = getattr(ctx.node.target, "_schema", None)
        if schema is None:
            raise Unsupported("not an ATen overload")
        self.index = {a.name: i for i, a in enumerate(schema.arguments)}
        self.defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}

    def value(self, name: str) -> Any:
        return self.ctx.arg(self.index[name], name, self.defaults.get(name))

    def state(self, name: str) -> Any:
        return self.ctx.state(self.index[name], name)

    def rank(self, name: str = "self") -> int:
        v = self.value(name)
        if not isinstance(v, torch.Tensor):
            raise Unsupported(f"argument {name!r} is not a tensor")
        return v.dim()


def translate(ctx: OpContext, call: Call, a: Args | None = None) -> OpContext:
    """The :class:`OpContext` the torch-level plugin would see for ``call`` (``a``: ``Args(ctx)``)."""
    a = Args(ctx) if a is None else a

    def st(r: Ref) -> Any:
        return CONST if isinstance(r, Lit) else a.state(r)

    def val(r: Ref) -> Any:
        return r.value if isinstance(r, Lit) else a.value(r)

    g = fx.Graph()
    if isinstance(call.target, Method):
        node = g.create_node("call_method", call.target.name, name=ctx.node.name)
    else:
        node = g.create_node("call_function", call.target, name=ctx.node.name)
    node.meta = ctx.node.meta
    out = ctx.out[call.out_index] if call.out_index is not None else ctx.out
    return OpContext(
        node, None,
        tuple(st(r) for r in call.args), {k: st(r) for k, r in call.kwargs.items()},
        tuple(val(r) for r in call.args), {k: val(r) for k, r in call.kwargs.items()},
        out, ctx.input_size, registry=ctx.registry, origin=ctx.origin or ctx.node,
    )


Translator = Callable[[Args], Call]


def _delegating(reg: Registry, tr: Translator, traits: Iterable[str] = ()) -> Plugin:
    """A plugin that translates each call once and hands RF, MACs, geometry and the init view to the
    torch-level plugin; ``traits`` are that plugin's (stated here: it may not be registered yet)."""

    def plugin_for(ctx: OpContext) -> tuple[Any, OpContext, Call]:
        hit = ctx.memo.get("aten")  # one translation per node, kept on that node's own context
        if hit is None:
            a = Args(ctx)
            call = tr(a)
            p = (ctx.registry or reg).lookup(call.target)  # the analysis's own registry: overrides apply
            if p is None:
                raise Unsupported(f"no plugin for the torch-level equivalent {call.target!r}")
            hit = ctx.memo["aten"] = (p, translate(ctx, call, a), call)
        return hit  # type: ignore[no-any-return]

    def rf(ctx: OpContext) -> Any:
        p, c2, call = plugin_for(ctx)
        if p.rf is None:
            raise Unsupported(f"plugin {p.name!r} gives no RF")
        st = p.rf(c2)
        return call.wrap(st, ctx) if call.wrap is not None else st

    def table(ctx: OpContext) -> Any:
        p, c2, call = plugin_for(ctx)
        if p.table is None:
            raise Unsupported(f"plugin {p.name!r} has no per-position rule")
        st = p.table(c2)
        return call.wrap(st, ctx) if call.wrap is not None else st

    def macs(ctx: OpContext) -> int:
        p, c2, _ = plugin_for(ctx)
        if p.macs is None:
            raise Unsupported("no MAC count")
        return p.macs(c2)  # type: ignore[no-any-return]  # validated by the interpreter (non-negative int)

    def geometry(ctx: OpContext) -> Geometry | None:
        p, c2, _ = plugin_for(ctx)
        return p.geometry(c2) if p.geometry is not None else None

    def init_view(ictx: InitContext) -> WeightView | None:
        # the init check runs after the analysis: translate from the node's raw fx arguments
        n = ictx.node
        vals = fx.node.map_arg((n.args, dict(n.kwargs)), lambda x: x.meta.get("val"))
        ctx = OpContext(n, None, (), {}, tuple(vals[0]), dict(vals[1]), n.meta.get("val"), ())
        try:
            a = Args(ctx)
            call = tr(a)
        except (Unsupported, KeyError, TypeError, ValueError):
            return None
        p = reg.lookup(call.target)
        if p is None or p.init_view is None:
            return None

        def raw(r: Ref) -> Any:
            return r.value if isinstance(r, Lit) else ictx.arg(a.index[r], r, a.defaults.get(r))

        target = call.target.name if isinstance(call.target, Method) else call.target
        return p.init_view(ictx.translated(target, tuple(raw(r) for r in call.args),
                                           {k: raw(r) for k, r in call.kwargs.items()}))

    return Plugin("", (), rf, macs, geometry=geometry, traits=frozenset(traits), init_view=init_view, table=table)


# -- translators ---------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(a: Args) -> Call:
    n = a.rank("weight") - 2
    return Call(_CONV[n], ["input", "weight", "bias", "stride", "padding", "dilation", "groups"])


def _conv_t(a: Args) -> Call:
    n = a.rank("weight") - 2
    return Call(_CONV_T[n], ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"])


def _convolution(a: Args) -> Call:
    return _conv_t(a) if bool(a.value("transposed")) else _conv(a)


def _max_pool(fn: Any) -> Translator:
    def tr(a: Args) -> Call:
        multi = isinstance(a.ctx.out, (tuple, list))  # (values, indices): both index the same windows
        return Call(fn, ["self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"],
                    out_index=0 if multi else None, wrap=(lambda st, ctx: (st, st)) if multi else None)

    return tr


def _avg_pool(fn: Any) -> Translator:
    names = ["self", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
    return lambda a: Call(fn, [n for n in names if n in a.index])  # avg_pool1d has no divisor_override


def _adaptive(fn: Any) -> Translator:
    def tr(a: Args) -> Call:
        multi = isinstance(a.ctx.out, (tuple, list))  # adaptive max pooling: (values, indices)
        return Call(fn, ["self", "output_size"], out_index=0 if multi else None,
                    wrap=(lambda st, ctx: (st, st)) if multi else None)

    return tr


def _upsample(mode: str) -> Translator:
    def tr(a: Args) -> Call:
        x = a.value("input") if "input" in a.index else a.value("self")
        n = x.dim() - 2
        ac = bool(a.value("align_corners")) if "align_corners" in a.index else False
        if "scale_factors" in a.index:  # .vec overload
            sf = a.value("scale_factors")
        else:
            names = [k for k in ("scales", "scales_d", "scales_h", "scales_w") if k in a.index]
            vals = [a.value(k) for k in names]
            if all(v is None for v in vals):
                sf = None
            elif any(v is None for v in vals):
                raise Unsupported("upsampling with a scale for some dims only")
            else:
                sf = vals
        if sf is not None:
            sf = [float(s) for s in sf]
            if len(sf) != n:
                raise Unsupported(f"{len(sf)} scale factors for {n} spatial dims")
        corners = None if mode.startswith("nearest") else ac  # F.interpolate refuses it for nearest
        return Call(F.interpolate, ["input" if "input" in a.index else "self", Lit(None), Lit(sf), Lit(mode),
                                    Lit(corners), Lit(False)])

    return tr


def _reduce(target: Any, dim: str | None, keep: str | None, empty_is_all: bool = False) -> Translator:
    def tr(a: Args) -> Call:
        d = a.value(dim) if dim is not None else None
        if d is not None and not isinstance(d, int) and len(d) == 0:
            if not empty_is_all:
                raise Unsupported("reduction over no dims")
            d = None
        k = bool(a.value(keep)) if keep is not None else False
        return Call(target, ["self", Lit(d), Lit(k)])

    return tr


def _softmax(a: Args) -> Call:
    return Call(F.softmax, ["self", "dim"])


def _reshape(a: Args) -> Call:
    out = a.ctx.out_shape
    src = "self" if "self" in a.index else "input"
    return Call(torch.reshape, [src, Lit(out)])


def _expand(a: Args) -> Call:
    return Call(Method("expand"), ["self", "size"])


def _copy(a: Args) -> Call:
    """``copy(dst, src)`` and ``copy_``: ``src``'s values broadcast to ``dst``'s shape (every element
    is overwritten; MViTv2's ``attn[:, :, k:, k:] = ...`` traced by ``torch.export``).  Who reads
    ``dst`` afterwards: :mod:`rfscope.passes.inplace`."""
    return Call(Method("expand"), ["src", Lit(tuple(a.ctx.out_shape))])


def _einsum(a: Args) -> Call:
    return Call(torch.einsum, ["equation", "tensors"])


def _expand_as(a: Args) -> Call:
    return Call(Method("expand_as"), ["self", "other"])


def _permute(a: Args) -> Call:
    return Call(torch.permute, ["self", "dims"])


def _transpose(a: Args) -> Call:
    return Call(torch.transpose, ["self", "dim0", "dim1"])


def _t(a: Args) -> Call:
    if a.rank() < 2:
        return Call(torch.reshape, ["self", Lit(a.ctx.out_shape)])
    return Call(torch.transpose, ["self", Lit(0), Lit(1)])


def _unsqueeze(a: Args) -> Call:
    return Call(torch.unsqueeze, ["self", "dim"])


def _squeeze(a: Args) -> Call:
    return Call(torch.squeeze, ["self", Lit(a.value("dim") if "dim" in a.index else None)])


def _index(dim: int, rank: int, item: Any) -> tuple[Any, ...]:
    return (slice(None),) * norm_dim(dim, rank) + (item,)


def _slice(a: Args) -> Call:
    start, end, step = a.value("start"), a.value("end"), a.value("step")
    idx = _index(int(a.value("dim")), a.rank(), slice(start, end, step))
    return Call(operator.getitem, ["self", Lit(idx)])


def _select(a: Args) -> Call:
    return Call(operator.getitem, ["self", Lit(_index(int(a.value("dim")), a.rank(), int(a.value("index"))))])


def _narrow(a: Args) -> Call:
    start = a.value("start")
    if isinstance(start, torch.Tensor):
        raise Unsupported("narrow with a tensor start")
    s = int(start)
    idx = _index(int(a.value("dim")), a.rank(), slice(s, s + int(a.value("length"))))
    return Call(operator.getitem, ["self", Lit(idx)])


def _cat(a: Args) -> Call:
    return Call(torch.cat, ["tensors", "dim"])


def _stack(a: Args) -> Call:
    return Call(torch.stack, ["tensors", "dim"])


def _split(a: Args) -> Call:
    size = "split_size" if "split_size" in a.index else "split_sizes"
    return Call(torch.split, ["self", size, "dim"])


def _tensor_split(a: Args) -> Call:
    where = next(k for k in ("indices", "sections", "tensor_indices_or_sections") if k in a.index)
    return Call(torch.tensor_split, ["self", where, "dim"])


def _chunk(a: Args) -> Call:
    return Call(torch.chunk, ["self", "chunks", "dim"])


def _unbind(a: Args) -> Call:
    return Call(torch.unbind, ["self", "dim"])


def _pad(a: Args) -> Call:
    if "mode" in a.index and a.value("mode") not in ("constant", "reflect", "replicate", "circular"):
        raise Unsupported(f"pad mode {a.value('mode')!r}")
    return Call(F.pad, ["self", "pad" if "pad" in a.index else "padding"])


def _pixel_shuffle(a: Args) -> Call:
    return Call(F.pixel_shuffle, ["self", "upscale_factor"])


def _pixel_unshuffle(a: Args) -> Call:
    return Call(F.pixel_unshuffle, ["self", "downscale_factor"])


def _linear(a: Args) -> Call:
    return Call(F.linear, ["input", "weight", "bias"])


def _no_input_bias(a: Args, name: str) -> None:
    if isinstance(a.state(name), TensorRF):
        raise Unsupported(f"{name} depends on the model input")


def _addmm(a: Args) -> Call:
    _no_input_bias(a, "self")
    return Call(torch.matmul, ["mat1", "mat2"])


def _baddbmm(a: Args) -> Call:
    _no_input_bias(a, "self")
    return Call(torch.matmul, ["batch1", "batch2"])


def _mm(a: Args) -> Call:
    return Call(torch.matmul, ["self", "mat2"])


def _matmul(a: Args) -> Call:
    return Call(torch.matmul, ["self", "other"])


def _stats(kind: str) -> Callable[[Any, OpContext], Any]:
    """Wrap a normalisation's (or attention's) output state with the states of its statistics outputs."""

    def wrap(st: Any, ctx: OpContext) -> Any:
        outs = ctx.out
        assert isinstance(outs, (tuple, list))
        res: list[Any] = [st]
        for v in outs[1:]:
            if not isinstance(v, torch.Tensor) or kind == "eval":
                res.append(CONST)  # running statistics: they do not depend on the input
            elif kind == "layer-norm":  # per position, over the normalised dims
                shp = Args(ctx).value("normalized_shape")
                n = 1 if isinstance(shp, int) else len(shp)
                res.append(reduce_dims(ctx.first, list(range(-n, 0)), keepdim=True))
            elif kind == "attention" and isinstance(st, TensorRF) and v.dim() == len(st.dims) - 1:
                res.append(st.with_dims(st.dims[:-1]))  # logsumexp per query: sees all keys, like the output
            else:  # batch/group statistics: over all positions
                first = ctx.first
                res.append(make_global(first, range(len(first.axes)), keep_local=False).with_dims([None] * v.dim()))
        return tuple(res)

    return wrap


def _batch_norm_training(a: Args) -> bool:
    if "training" in a.index:
        return bool(a.value("training"))
    return a.ctx.node.target is not aten._native_batch_norm_legit_no_training.default


def _batch_norm(a: Args) -> Call:
    multi = isinstance(a.ctx.out, (tuple, list))
    x = "input"
    if _batch_norm_training(a):
        # batch statistics over positions: every unit sees the whole input; the direct path stays local
        return Call(F.group_norm, [x, Lit(1)], out_index=0 if multi else None,
                    wrap=_stats("batch-norm") if multi else None)
    return Call(F.batch_norm, [x, Lit(None), Lit(None)], out_index=0 if multi else None,
                wrap=_stats("eval") if multi else None)


def _layer_norm(a: Args) -> Call:
    multi = isinstance(a.ctx.out, (tuple, list))
    return Call(F.layer_norm, ["input", "normalized_shape"], out_index=0 if multi else None,
                wrap=_stats("layer-norm") if multi else None)


def _group_norm(a: Args) -> Call:
    multi = isinstance(a.ctx.out, (tuple, list))
    groups = "num_groups" if "num_groups" in a.index else "group"
    return Call(F.group_norm, ["input", groups], out_index=0 if multi else None,
                wrap=_stats("group-norm") if multi else None)


def _instance_norm(a: Args) -> Call:
    return Call(F.instance_norm, ["input"])


def _rms_norm(a: Args) -> Call:
    return Call(F.rms_norm, ["input", "normalized_shape"])


def _sdpa(a: Args) -> Call:
    multi = isinstance(a.ctx.out, (tuple, list))
    return Call(F.scaled_dot_product_attention, ["query", "key", "value"], out_index=0 if multi else None,
                wrap=_stats("attention") if multi else None)


# -- direct plugins ------------------------------------------------------------------------

def _elementwise(ctx: OpContext) -> Any:
    st = elementwise(ctx, f"elementwise op {ctx.node.name}")
    if isinstance(ctx.out, (tuple, list)):  # native_dropout: (output, mask)
        return (st,) + tuple(CONST for _ in ctx.out[1:])
    return st


def _multi_elementwise(ctx: OpContext) -> Any:
    outs = ctx.out
    assert isinstance(outs, (tuple, list))
    first = OpContext(ctx.node, ctx.module, ctx.args, ctx.kwargs, ctx.arg_values, ctx.kwarg_values, outs[0],
                      ctx.input_size)
    st = elementwise(first, f"elementwise op {ctx.node.name}")
    return tuple(st if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(outs[0].shape) else CONST
                 for v in outs)


def _restride(ctx: OpContext) -> TensorRF:
    """``as_strided``: exact only when it keeps every element where it was (e.g. re-striding size-1 dims)."""
    x, out = ctx.arg_values[0], ctx.out
    if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor)) or x.shape != out.shape:
        raise Unsupported("as_strided that changes the shape")
    same = all(a == b for a, b, n in zip(x.stride(), out.stride(), x.shape, strict=True) if n > 1)
    if not same or x.storage_offset() != out.storage_offset():
        raise Unsupported("as_strided that moves elements")
    return same_state(ctx)


def _const(ctx: OpContext) -> Any:
    """``zeros_like`` and friends: the values do not depend on the input."""
    return CONST


# -- registration --------------------------------------------------------------------------

def overloads(names: Iterable[str], inplace: bool = False) -> list[Any]:
    """The overloads of the named ATen ops that exist in this torch and return tensors (no ``out=`` ones)."""
    res: list[Any] = []
    for name in names:
        for n in (name, name + "_") if inplace else (name,):
            packet = getattr(aten, n, None)
            if packet is None:
                continue
            for ov in packet.overloads():
                op = getattr(packet, ov)
                # not the out= variants, nor scalar/list overloads (aten.add.int, aten.add.t)
                if "out" in ov.split("_") or not any("Tensor" in str(r.type) for r in op._schema.returns):
                    continue
                res.append(op)
    return list(dict.fromkeys(res))


_RELU = ["relu", "relu6"]
#: deterministic one-input activations and math: the same function on every element
_UNARY = ["neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "square", "gelu", "silu", "sigmoid", "tanh",
          "hardtanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign",
          "threshold", "erf", "reciprocal", "sign", "sin", "cos", "floor", "ceil", "round", "trunc", "nan_to_num",
          "hardshrink", "softshrink", "logit", "exp2", "log2", "log10", "atan"]
#: random in training (dropout, rrelu) or with a per-channel weight argument (prelu)
_POINTWISE_ONLY = ["dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout", "rrelu",
                   "prelu", "_prelu_kernel"]
_ELEMENTWISE = [
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "remainder", "neg", "abs", "exp", "log",
    "log1p", "expm1", "sqrt", "rsqrt", "pow", "square", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh",
    "hardtanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign",
    "threshold", "prelu", "_prelu_kernel", "rrelu", "clamp", "clamp_min", "clamp_max", "clip", "maximum", "minimum",
    "where", "erf", "reciprocal", "sign", "sin", "cos", "floor", "ceil", "round", "trunc", "lerp", "addcmul",
    "addcdiv", "masked_fill", "nan_to_num", "logical_not", "logical_and", "logical_or", "eq", "ne", "gt", "lt",
    "ge", "le", "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout",
    "hardshrink", "softshrink", "logit", "exp2", "log2", "log10", "fmod", "atan", "atan2",
]
_SELF_ONLY = ["clone", "contiguous", "alias", "alias_copy", "detach", "detach_copy", "_to_copy", "to",
              "lift_fresh_copy", "type_as", "_conj", "resolve_conj", "resolve_neg", "positive"]
_CONST = ["zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "scalar_tensor"]


def register(reg: Registry) -> None:
    def d(name: str, ops: list[Any], tr: Translator, traits: Iterable[str] = ()) -> None:
        p = _delegating(reg, tr, traits)
        reg.add(name, ops, rf=p.rf, macs=p.macs, geometry=p.geometry, traits=p.traits, init_view=p.init_view,
                table=p.table)

    # the traits of the torch-level plugins (rfscope.plugins.pointwise) for the same ops
    grouped = [*_RELU, *_UNARY, *_POINTWISE_ONLY]
    assert all(n in _ELEMENTWISE for n in grouped)
    ew = elementwise_rule
    reg.add("aten_relu", overloads(_RELU, inplace=True), rf=_elementwise, traits={POINTWISE, RELU, CHANNELWISE},
            table=ew)
    reg.add("aten_unary", overloads(_UNARY, inplace=True), rf=_elementwise, traits={POINTWISE, CHANNELWISE}, table=ew)
    reg.add("aten_random", overloads(_POINTWISE_ONLY, inplace=True), rf=_elementwise, traits={POINTWISE}, table=ew)
    reg.add("aten_elementwise", overloads([n for n in _ELEMENTWISE if n not in grouped], inplace=True),
            rf=_elementwise, table=ew)
    reg.add("aten_multi_elementwise", overloads(["log_sigmoid_forward"]), rf=_multi_elementwise, table=ew)
    reg.add("aten_copy", overloads(_SELF_ONLY), rf=self_state, traits={POINTWISE, CHANNELWISE}, table=self_rule)
    # ops that only move values: PyTorch runs them on the per-position tables themselves
    reg.add("aten_index_ops", overloads(["roll", "flip", "repeat", "repeat_interleave", "index_select", "gather",
                                         "take_along_dim", "unfold", "im2col", "channel_shuffle", "index",
                                         "diagonal", "tile"]),
            table=index_rule)
    reg.add("aten_const", overloads(_CONST), rf=_const)
    reg.add("aten_as_strided", overloads(["as_strided"], inplace=True), rf=_restride)
    d("aten_conv", overloads(["conv1d", "conv2d", "conv3d"]), _conv)
    d("aten_conv_transpose", overloads(["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]), _conv_t)
    d("aten_convolution", overloads(["convolution", "_convolution"]), _convolution)
    pools: list[tuple[str, Any, Callable[[Any], Translator]]] = [
        ("max_pool1d", F.max_pool1d, _max_pool), ("max_pool2d", F.max_pool2d, _max_pool),
        ("max_pool3d", F.max_pool3d, _max_pool), ("max_pool1d_with_indices", F.max_pool1d_with_indices, _max_pool),
        ("max_pool2d_with_indices", F.max_pool2d_with_indices, _max_pool),
        ("max_pool3d_with_indices", F.max_pool3d_with_indices, _max_pool),
        ("avg_pool1d", F.avg_pool1d, _avg_pool), ("avg_pool2d", F.avg_pool2d, _avg_pool),
        ("avg_pool3d", F.avg_pool3d, _avg_pool),
    ]
    for op, fn, make in pools:
        d(f"aten_{op}", overloads([op]), make(fn), {CHANNELWISE})
    for n, fa, fm in ((1, F.adaptive_avg_pool1d, F.adaptive_max_pool1d), (2, F.adaptive_avg_pool2d,
                      F.adaptive_max_pool2d), (3, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)):
        d(f"aten_adaptive_avg_pool{n}d", overloads([f"adaptive_avg_pool{n}d", f"_adaptive_avg_pool{n}d"]),
          _adaptive(fa), {CHANNELWISE})
        d(f"aten_adaptive_max_pool{n}d", overloads([f"adaptive_max_pool{n}d"]), _adaptive(fm), {CHANNELWISE})
    for op, mode in (("upsample_nearest1d", "nearest"), ("upsample_nearest2d", "nearest"),
                     ("upsample_nearest3d", "nearest"), ("_upsample_nearest_exact1d", "nearest-exact"),
                     ("_upsample_nearest_exact2d", "nearest-exact"), ("_upsample_nearest_exact3d", "nearest-exact"),
                     ("upsample_linear1d", "linear"), ("upsample_bilinear2d", "bilinear"),
                     ("upsample_trilinear3d", "trilinear"), ("upsample_bicubic2d", "bicubic")):
        d(f"aten_{op}", overloads([op]), _upsample(mode))
    d("aten_pixel_shuffle", overloads(["pixel_shuffle"]), _pixel_shuffle)
    d("aten_pixel_unshuffle", overloads(["pixel_unshuffle"]), _pixel_unshuffle)
    d("aten_mean", [aten.mean.dim], _reduce(torch.mean, "dim", "keepdim", empty_is_all=True))
    d("aten_sum", [aten.sum.dim_IntList], _reduce(torch.sum, "dim", "keepdim", empty_is_all=True))
    d("aten_reduce_all", [aten.mean.default, aten.sum.default, aten.max.default, aten.min.default,
                          aten.prod.default], _reduce(torch.mean, None, None))
    d("aten_amax", overloads(["amax", "amin"]), _reduce(torch.amax, "dim", "keepdim", empty_is_all=True))
    d("aten_max_dim", [aten.max.dim, aten.min.dim], _reduce(torch.max, "dim", "keepdim"))
    d("aten_var", [aten.var.correction, aten.std.correction, aten.var_mean.correction],
      _reduce(torch.var, "dim", "keepdim", empty_is_all=True))
    d("aten_logsumexp", [aten.logsumexp.default, aten.prod.dim_int], _reduce(torch.logsumexp, "dim", "keepdim"))
    # torch.norm's second parameter is ``p``, not ``dim``: read as torch.sum, the same reduction
    d("aten_vector_norm", [aten.linalg_vector_norm.default],
      _reduce(torch.sum, "dim", "keepdim", empty_is_all=True))
    d("aten_softmax", overloads(["_softmax", "softmax", "_log_softmax", "log_softmax"]), _softmax)
    d("aten_reshape", overloads(["view", "_unsafe_view", "reshape", "view_copy", "_reshape_alias", "unflatten",
                                 "_reshape_copy"]), _reshape)
    d("aten_flatten", overloads(["flatten"]), _reshape, {FLATTEN})
    d("aten_expand", overloads(["expand", "expand_copy"]), _expand)
    d("aten_copy_into", [aten.copy.default, aten.copy_.default], _copy)
    d("aten_expand_as", overloads(["expand_as"]), _expand_as)
    d("aten_einsum", overloads(["einsum"]), _einsum)
    d("aten_permute", overloads(["permute", "permute_copy"]), _permute)
    d("aten_transpose", [aten.transpose.int, aten.transpose_copy.int], _transpose)
    d("aten_t", overloads(["t", "t_copy"]), _t)
    d("aten_unsqueeze", overloads(["unsqueeze", "unsqueeze_copy"]), _unsqueeze)
    d("aten_squeeze", overloads(["squeeze", "squeeze_copy"]), _squeeze)
    d("aten_slice", [aten.slice.Tensor, aten.slice_copy.Tensor], _slice)
    d("aten_select", [aten.select.int, aten.select_copy.int], _select)
    d("aten_narrow", [aten.narrow.default], _narrow)
    d("aten_cat", overloads(["cat", "concat", "concatenate"]), _cat)
    d("aten_stack", overloads(["stack"]), _stack)
    d("aten_split", [aten.split.Tensor, aten.split_with_sizes.default, aten.split_copy.Tensor,
                     aten.split_with_sizes_copy.default], _split)
    d("aten_tensor_split", [aten.tensor_split.indices, aten.tensor_split.sections,
                            aten.tensor_split.tensor_indices_or_sections], _tensor_split)
    d("aten_chunk", [aten.chunk.default], _chunk)
    d("aten_unbind", [aten.unbind.int, aten.unbind_copy.int], _unbind)
    d("aten_pad", overloads(["constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                             "replication_pad1d", "replication_pad2d", "replication_pad3d", "_pad_circular"]), _pad)
    d("aten_linear", overloads(["linear"]), _linear)
    d("aten_addmm", [aten.addmm.default], _addmm)
    d("aten_baddbmm", [aten.baddbmm.default], _baddbmm)
    d("aten_mm", [aten.mm.default, aten.bmm.default], _mm)
    d("aten_matmul", [aten.matmul.default], _matmul)
    d("aten_batch_norm", overloads(["batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                                    "_native_batch_norm_legit_no_training"]), _batch_norm, {NORM})
    d("aten_layer_norm", overloads(["layer_norm", "native_layer_norm"]), _layer_norm, {NORM})
    d("aten_group_norm", overloads(["group_norm", "native_group_norm"]), _group_norm, {NORM})
    d("aten_instance_norm", overloads(["instance_norm"]), _instance_norm, {NORM})
    d("aten_rms_norm", overloads(["rms_norm"]), _rms_norm, {NORM})
    d("aten_sdpa", overloads(["scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                              "_scaled_dot_product_attention_math", "_scaled_dot_product_cudnn_attention"]), _sdpa)
