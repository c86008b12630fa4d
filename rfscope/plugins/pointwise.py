"""Elementwise ops: activations, dropout, eval-mode BatchNorm, arithmetic, merges (``+``, ``*``).

One rf function for all of them; the registrations differ only in what they tell the passes
(:mod:`rfscope.core.traits`): ReLU-like, channelwise (deterministic, the same for every channel),
random (dropout), normalising, or a merge of several tensors (no traits).
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import elementwise, same_state, self_state
from rfscope.core.positions import elementwise_rule, self_rule
from rfscope.core.registry import Method, Registry
from rfscope.core.state import TensorRF
from rfscope.core.traits import BATCHNORM, CHANNELWISE, NORM, POINTWISE, RELU

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink,
    nn.Softshrink,
)
OTHER_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout, nn.Identity)
#: BatchNorm in eval mode (the analysis copy is in eval) is a per-channel affine map.
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
#: random in training: they break the symmetry between units, so they are not channelwise
_RANDOM_MODULES = (nn.RReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                   nn.FeatureAlphaDropout)

_FUNCS = [
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.softsign, F.tanhshrink, F.threshold,
    F.logsigmoid, F.sigmoid, F.tanh, F.prelu, F.rrelu, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, F.batch_norm, F.hardshrink, F.softshrink,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.abs, torch.neg, torch.clamp, torch.clip, torch.square, torch.pow, torch.sin, torch.cos,
    torch.erf, torch.reciprocal, torch.sign, torch.floor, torch.ceil, torch.round,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.maximum, torch.minimum,
    torch.where, torch.lerp, torch.addcmul, torch.addcdiv, torch.dropout, torch.batch_norm,
    torch.nan_to_num, torch.masked_fill, torch.sigmoid_, torch.exp_,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg,
    operator.pow, operator.iadd, operator.imul, operator.isub, operator.itruediv, operator.mod,
    operator.pos, operator.abs,
]
_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "abs",
    "neg", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "pow", "square", "add", "add_",
    "sub", "sub_", "mul", "mul_", "div", "div_", "masked_fill", "masked_fill_", "sin", "cos",
    "erf", "reciprocal", "sign", "softplus", "lerp", "where", "addcmul", "addcdiv", "neg_",
    "exp_", "abs_",
]
_RELU_FUNCS = [F.relu, F.relu_, F.relu6, torch.relu, torch.relu_, Method("relu"), Method("relu_")]
#: deterministic one-input activations and math (the same function on every element)
_UNARY_FUNCS = [
    F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.softplus, F.softsign, F.tanhshrink, F.threshold, F.logsigmoid, F.sigmoid, F.tanh, F.hardshrink,
    F.softshrink, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs,
    torch.neg, torch.square, torch.sin, torch.cos, torch.erf, torch.reciprocal, torch.sign, torch.floor,
    torch.ceil, torch.round, torch.nan_to_num, torch.sigmoid_, torch.exp_, operator.neg, operator.pos,
    operator.abs,
]
_UNARY_METHODS = ["sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "abs", "neg", "square",
                  "sin", "cos", "erf", "reciprocal", "sign", "softplus", "neg_", "exp_", "abs_"]
#: random in training (dropout, RReLU) or with a per-channel weight passed as an argument (prelu)
_POINTWISE_ONLY_FUNCS = [F.prelu, F.rrelu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                         F.feature_alpha_dropout, torch.dropout]
#: eval-mode batch norm as a function (its per-channel parameters are arguments)
_NORM_FUNCS = [F.batch_norm, torch.batch_norm]

#: Methods whose output depends only on ``self`` (other tensor arguments give dtype/device).
_SELF_ONLY = ["contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to",
              "type_as", "type", "requires_grad_", "cpu", "cuda"]


def _elementwise(ctx: OpContext) -> TensorRF:
    return elementwise(ctx, f"elementwise op {ctx.node.name}")


def _complex_part(ctx: OpContext) -> TensorRF:
    if ctx.node.target is getattr:
        name = ctx.arg_values[1] if len(ctx.arg_values) > 1 else None
        if name not in ("real", "imag"):
            raise Unsupported(f"getattr of {name!r}")
    return same_state(ctx)


def register(reg: Registry) -> None:
    channelwise = [m for m in (*ACTIVATION_MODULES, *OTHER_MODULES)
                   if m not in _RELU_MODULES and m not in _RANDOM_MODULES]
    reg.add("relu_modules", _RELU_MODULES, rf=_elementwise, table=elementwise_rule,
            traits={POINTWISE, RELU, CHANNELWISE})
    reg.add("pointwise_modules", channelwise, rf=_elementwise, table=elementwise_rule, traits={POINTWISE, CHANNELWISE})
    reg.add("random_modules", _RANDOM_MODULES, rf=_elementwise, table=elementwise_rule, traits={POINTWISE})
    reg.add("batch_norm_modules", BATCHNORM_MODULES, rf=_elementwise, table=elementwise_rule,
            traits={POINTWISE, CHANNELWISE, NORM, BATCHNORM})
    funcs = [*_FUNCS, *(Method(m) for m in _METHODS)]
    unary = [*_UNARY_FUNCS, *(Method(m) for m in _UNARY_METHODS)]
    grouped = [*_RELU_FUNCS, *unary, *_POINTWISE_ONLY_FUNCS, *_NORM_FUNCS]
    assert all(f in funcs for f in grouped), "every grouped function is one of _FUNCS/_METHODS"
    reg.add("relu", _RELU_FUNCS, rf=_elementwise, table=elementwise_rule, traits={POINTWISE, RELU, CHANNELWISE})
    reg.add("unary", unary, rf=_elementwise, table=elementwise_rule, traits={POINTWISE, CHANNELWISE})
    reg.add("random", _POINTWISE_ONLY_FUNCS, rf=_elementwise, table=elementwise_rule, traits={POINTWISE})
    reg.add("batch_norm", _NORM_FUNCS, rf=_elementwise, table=elementwise_rule, traits={POINTWISE, NORM})
    reg.add("elementwise", tuple(dict.fromkeys(f for f in funcs if f not in grouped)), rf=_elementwise,
            table=elementwise_rule)
    reg.add("self_only", tuple(Method(m) for m in _SELF_ONLY) + (torch.clone,), rf=self_state,
            traits={POINTWISE, CHANNELWISE}, table=self_rule)
    # ``z.real`` / ``z.imag`` of a complex input (an STFT front end): the same positions, element by element
    reg.add("complex_part", (getattr, torch.real, torch.imag, torch.ops.aten.real.default,
                             torch.ops.aten.imag.default), rf=_complex_part, traits={POINTWISE, CHANNELWISE},
            table=elementwise_rule)
