"""Gradient oracle for exact theoretical receptive fields (docs/design.md §5).

Written independently of rfscope: it runs the real model (a float64 copy), so
every index map is PyTorch's own.  Every conv/linear weight and bias is a
positive constant (the usual recipe sets biases to 0, which only matters for products:
``x * y`` where ``y`` sees no pixel would hide ``x``); activations, BatchNorm,
Dropout, LayerNorm and GroupNorm are the identity; max pooling becomes an all-ones depthwise
convolution with the same kernel, stride, padding, dilation and output size
(average pooling with ``count_include_pad=True``, which PyTorch lacks for
dilation).  With an all-ones input nothing cancels, so the non-zero support of
d(unit)/d(input) is exactly the set of pixels the unit sees.

Functional calls (``F.relu``, ``F.max_pool2d``, ``x.sigmoid()`` ...) are caught
with a :class:`torch.overrides.TorchFunctionMode`, module calls through their
functional forms.  ``local=True`` also detaches global reductions (adaptive
pooling to 1, ``mean``/``amax``), so an SE block's gating path is ignored and
the support is the local RF that papers quote.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["Oracle", "prepare"]

T = torch.Tensor

_IDENTITY_NAMES = [
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "softplus",
    "softsign", "sigmoid", "sigmoid_", "tanh", "tanh_", "logsigmoid", "tanhshrink", "prelu", "rrelu",
    "threshold", "hardshrink", "softshrink", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "batch_norm", "layer_norm", "group_norm",
    "instance_norm", "rms_norm", "local_response_norm",
]


def _collect(names: Sequence[str]) -> set[Any]:
    out: set[Any] = set()
    for n in names:
        for ns in (F, torch, T):
            f = getattr(ns, n, None)
            if f is not None:
                out.add(f)
    return out


_IDENTITY = _collect(_IDENTITY_NAMES)
_MAXPOOL = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, torch.max_pool1d: 1, torch.max_pool2d: 2,
            torch.max_pool3d: 3, F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2,
            F.max_pool3d_with_indices: 3}
_ADA_MAX = {F.adaptive_max_pool1d: F.adaptive_avg_pool1d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
            F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
            F.adaptive_max_pool1d_with_indices: F.adaptive_avg_pool1d,
            F.adaptive_max_pool2d_with_indices: F.adaptive_avg_pool2d,
            F.adaptive_max_pool3d_with_indices: F.adaptive_avg_pool3d}
_ADA_MAX_IDX = {F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
                F.adaptive_max_pool3d_with_indices}
_ADA_AVG = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.adaptive_avg_pool1d}
_MEAN = {torch.mean, T.mean}
_AMAX = {torch.amax, T.amax}


def _tup(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(x) for x in v)
    return t * n if len(t) == 1 else t


def _maxpool_as_conv(func: Any, n: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Max pooling -> all-ones depthwise conv with the same index map (and output size)."""
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    a = dict(zip(names, args, strict=False))
    a.update(kwargs)
    x = a["input"]
    k = _tup(a["kernel_size"], n)
    s = _tup(a.get("stride") or k, n)
    p = _tup(a.get("padding", 0), n)
    d = _tup(a.get("dilation", 1), n)
    with torch.no_grad():
        ref = F.max_pool1d if n == 1 else F.max_pool2d if n == 2 else F.max_pool3d
        out_shape = ref(torch.zeros(x.shape, dtype=torch.float32), k, s, p, d, bool(a.get("ceil_mode", False))).shape
    c = x.shape[-n - 1]
    batched = x.dim() == n + 2
    xx = x if batched else x.unsqueeze(0)
    # left pad p; right pad enough for every output window (ceil_mode), then crop
    pads: list[int] = []
    for i in reversed(range(n)):
        need = (out_shape[-n + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - p[i] - x.shape[-n + i]
        pads += [p[i], max(need, 0)]
    xx = F.pad(xx, pads)
    w = torch.ones((c, 1, *k), dtype=x.dtype) / float(torch.tensor(k).prod())
    conv = F.conv1d if n == 1 else F.conv2d if n == 2 else F.conv3d
    y = conv(xx, w, None, s, 0, d, c)
    y = y[(..., *(slice(0, out_shape[-n + i]) for i in range(n)))]
    if not batched:
        y = y.squeeze(0)
    if a.get("return_indices") or func in (F.max_pool1d_with_indices, F.max_pool2d_with_indices,
                                           F.max_pool3d_with_indices):
        return y, torch.zeros(y.shape, dtype=torch.long)
    return y


class _Stop(Exception):
    """Raised by the capture hook once every requested module output is captured."""


class _Mode(TorchFunctionMode):
    def __init__(self, local: bool) -> None:
        super().__init__()
        self.local = local

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _IDENTITY:
            return args[0] if args else kwargs["input"]
        if func in _MAXPOOL:
            return _maxpool_as_conv(func, _MAXPOOL[func], args, kwargs)
        if func in _ADA_MAX:
            y = _ADA_MAX[func](args[0], args[1] if len(args) > 1 else kwargs["output_size"])
            with_idx = func in _ADA_MAX_IDX or (len(args) > 2 and args[2]) or kwargs.get("return_indices")
            out: Any = (y, torch.zeros(y.shape, dtype=torch.long)) if with_idx else y
            if self.local and y.shape[2:].numel() == 1:
                out = (y.detach(), out[1]) if isinstance(out, tuple) else y.detach()
            return out
        if func in _AMAX:
            func = T.mean
        res = func(*args, **kwargs)
        if self.local and (func in _MEAN or func in _AMAX or func in _ADA_AVG and isinstance(res, T)
                           and res.shape[2:].numel() == 1):
            res = res.detach()
        return res


def prepare(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A deep copy (float64 by default) with positive constant weights (1/fan-in: no overflow) and biases."""
    m = copy.deepcopy(model).to(dtype).eval()
    if any(t.is_meta for t in [*m.parameters(), *m.buffers()]):  # a model built on the meta device
        m = m.to_empty(device="cpu")
    with torch.no_grad():
        for name, b in m.named_buffers():
            if b.is_floating_point():
                b.fill_(1.0 if "var" in name else 0.0)
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                # positive, not 0: a product merge (SE gating, x * y) must depend on both factors even
                # where one of them sees no pixel (transposed conv with kernel < stride)
                p.fill_(0.5)
            elif p.dim() >= 2:
                p.fill_(1.0 / max(p[0].numel(), 1))
            else:
                p.fill_(1.0)
    return m


class Oracle:
    """Run a prepared copy once; ``support(index)`` backprops one output unit.

    ``module``: capture this submodule's (first call) output instead of the
    model's.  ``index``: spatial index of the unit; the gradient of the sum over
    channels at that position is taken.  Layout ``(N, C, *spatial)``.  ``dtype=float32``
    is much faster for depthwise convs on CPU; an underflow could only drop pixels
    from the support, which makes a comparison fail, never pass wrongly.  ``batch=B``
    runs B identical samples (every op is per-sample: norms are the identity) so that
    up to B units are probed, one per sample, in a single ordinary backward pass.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], module: str | Sequence[str] | None = None,
                 local: bool = False, select: Callable[[Any], T] | None = None,
                 dtype: torch.dtype = torch.float64, batch: int = 1) -> None:
        self.model = prepare(model, dtype)
        shape = (max(batch, int(input_shape[0])), *input_shape[1:])
        self.x = torch.ones(shape, dtype=dtype, requires_grad=True)
        names = [module] if isinstance(module, str) else list(module or [])
        self.outs: dict[str, T] = {}
        handles = []
        for name in names:
            def hook(_m: nn.Module, _i: Any, o: Any, name: str = name) -> None:
                if name not in self.outs:  # first call only
                    self.outs[name] = o if isinstance(o, T) else o[0]
                if select is None and len(self.outs) == len(names):
                    raise _Stop  # nothing later is needed: skip the rest of the forward

            handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        out: Any = None
        try:
            with _Mode(local):
                out = self.model(self.x)
        except _Stop:
            pass
        for h in handles:
            h.remove()
        if select is not None:
            out = select(out)
        self.out: T = self.outs[names[0]] if names else out
        self.n_spatial = len(input_shape) - 2

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(self.out.shape[2:])

    def support(self, index: Sequence[int]) -> tuple[list[int], ...]:
        """Per input spatial axis, the sorted pixels with non-zero gradient."""
        return self.supports([index])[0]

    def out_size_of(self, module: str) -> tuple[int, ...]:
        return tuple(self.outs[module].shape[2:])

    def supports(self, indices: Sequence[Sequence[int]], module: str | None = None) -> list[tuple[list[int], ...]]:
        """``support`` for several units (of ``module``'s output, default the main one),
        in one batched backward pass when autograd allows."""
        y = self.outs[module] if module is not None else self.out
        if 1 < len(indices) <= y.shape[0]:  # one unit per sample, one backward pass
            go1 = torch.zeros(y.shape, dtype=y.dtype)
            for b, index in enumerate(indices):
                go1[(b, slice(None), *(int(i) for i in index))] = 1.0
            (g1,) = torch.autograd.grad(y, self.x, go1, retain_graph=True)
            return [self._axes(g1[b]) for b in range(len(indices))]
        go = torch.zeros((len(indices), *y.shape), dtype=y.dtype)
        for b, index in enumerate(indices):
            go[(b, 0, slice(None), *(int(i) for i in index))] = 1.0
        try:
            (g,) = torch.autograd.grad(y, self.x, go, retain_graph=True, is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: one pass per unit
            g = torch.stack([torch.autograd.grad(y, self.x, go[b], retain_graph=True)[0]
                             for b in range(len(indices))])
        return [self._axes(g[b, 0]) for b in range(len(indices))]

    def _axes(self, g: T) -> tuple[list[int], ...]:
        """Per spatial axis, the indices where the gradient ``g`` (C, *spatial) is non-zero."""
        nz = (g != 0).any(dim=0)  # over input channels
        res = []
        for a in range(self.n_spatial):
            other = [d for d in range(self.n_spatial) if d != a]
            v = nz.any(dim=other) if other else nz
            res.append([int(i) for i in torch.nonzero(v).flatten()])
        return tuple(res)
