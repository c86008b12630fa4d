"""Output shapes of common modules without running their meta kernels.

On the ``meta`` device PyTorch computes the shape of BatchNorm, LayerNorm,
Linear and the Hard*/GELU activations through Python decompositions that cost
up to a millisecond per call, which made shape propagation most of the analysis
time.  For the exact classes below (a subclass may override ``forward``) and the
plain case only — contiguous floating-point input whose dtype matches the
parameters, shapes that the module accepts — the output is known without
computing it: a fresh contiguous tensor of the expected shape, or the input
itself for in-place ops, exactly what the meta kernel returns.  Anything else
returns ``None`` and the module runs as usual (so errors are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["fast_module_output"]

_Rule = Callable[[Any, torch.Tensor], "torch.Tensor | None"]


def _plain(x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.device.type == "meta"
        and x.is_floating_point()
        and x.is_contiguous()
        and not x.requires_grad
    )


def _same_dtype(x: torch.Tensor, *ps: Any) -> bool:
    return all(p is None or (p.dtype == x.dtype and p.device.type == "meta") for p in ps)


def _pointwise(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    if getattr(m, "inplace", False):
        return x
    return torch.empty_like(x)


def _batchnorm(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    # eval with running statistics: a per-channel affine map (training or no running
    # stats would check the batch size; leave that to the real call)
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    if x.dim() not in _BN_DIMS[type(m)] or x.shape[1] != m.num_features:
        return None
    if not _same_dtype(x, m.weight, m.bias, m.running_mean, m.running_var):
        return None
    return torch.empty_like(x)


def _layernorm(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    ns = tuple(m.normalized_shape)
    if x.dim() < len(ns) or tuple(x.shape[x.dim() - len(ns):]) != ns:
        return None
    if not _same_dtype(x, m.weight, m.bias):
        return None
    return torch.empty_like(x)


def _linear(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    if x.dim() < 1 or x.shape[-1] != m.in_features or x.numel() == 0:
        return None
    if not _same_dtype(x, m.weight, m.bias):
        return None
    return torch.empty((*x.shape[:-1], m.out_features), dtype=x.dtype, device="meta")


_BN_DIMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}

_RULES: dict[type, _Rule] = {
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.BatchNorm3d: _batchnorm,
    nn.LayerNorm: _layernorm,
    nn.Linear: _linear,
    nn.ReLU: _pointwise,
    nn.ReLU6: _pointwise,
    nn.SiLU: _pointwise,
    nn.Hardswish: _pointwise,
    nn.Hardsigmoid: _pointwise,
    nn.Sigmoid: _pointwise,
    nn.Tanh: _pointwise,
}


def _gelu(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    return torch.empty_like(x) if m.approximate in ("none", "tanh") else None


_RULES[nn.GELU] = _gelu


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m

    return bool(_m._global_forward_hooks or _m._global_forward_pre_hooks)


def fast_module_output(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The meta output of ``module(*args, **kwargs)`` when it is known cheaply, else ``None``."""
    rule = _RULES.get(type(module))
    if rule is None or kwargs or len(args) != 1 or not _plain(args[0]):
        return None
    if module._forward_hooks or module._forward_pre_hooks or _global_hooks():
        return None
    return rule(module, args[0])
