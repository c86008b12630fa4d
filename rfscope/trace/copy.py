"""Copies of the user's model that the analysis may change: the structural copy, meta copies,
and walks of the module tree that work at any depth."""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from rfscope.trace.shortcuts import _like


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``model`` with every parameter and buffer on ``meta``.

    Tensor identity is preserved: a weight tied in two places is one meta tensor.
    The copy is put in eval mode (BatchNorm uses running statistics).
    """
    memo: dict[int, Any] = {}
    for m in modules(model):
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = _meta_twin(t)
    cp = deepcopy_modules(model, memo)  # copy.deepcopy, minus its per-module overhead
    clear_hooks(cp)  # hooks belong to the user; the copy must not run them
    cp.eval()
    return cp


#: a module's hook dictionaries (forward, backward, state-dict...): emptied on every copy
_HOOK_DICTS = frozenset(k for k, v in vars(torch.nn.Module()).items() if isinstance(v, dict) and "hook" in k)


def own_tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors ``m`` itself holds (not its children's): parameters, buffers, tensor attributes."""
    return [t for t in (*m._parameters.values(), *m._buffers.values(), *vars(m).values())
            if isinstance(t, torch.Tensor)]


def structural_copy(model: torch.nn.Module, tree: list[torch.nn.Module] | None = None) -> torch.nn.Module:
    """A deep copy of the module tree for tracing and shape rules.

    ``copy.deepcopy`` semantics (new module objects, copied attributes, references between
    modules mapped to the copies) except for tensors: parameters are the user's own objects
    (:func:`trace` refuses in-place writes to them, shape propagation reads only their
    metadata), buffers and tensor attributes are clones (real values, so a forward that
    branches on a flag buffer traces as it runs, and updates them in place on the copy);
    tied tensors stay tied.  The copy has no hooks and is in eval mode.  A class with its own
    copy protocol makes the whole tree a :func:`meta_copy`.  ``tree``: ``modules(model)``, when the
    caller has walked it already.
    """
    tree = modules(model) if tree is None else tree
    if not all(_plain(type(m)) for m in tree):
        return meta_copy(model)
    memo: dict[int, Any] = {}
    for m in tree:
        for t in own_tensors(m):
            if id(t) not in memo:
                memo[id(t)] = _private_twin(t)
        memo[id(m)] = type(m).__new__(type(m))
    for m in tree:
        d: dict[str, Any] = {}
        for k, v in m.__dict__.items():
            if type(v) in _ATOMIC:
                d[k] = v
            elif k in ("_parameters", "_buffers"):
                d[k] = {name: None if t is None else memo[id(t)] for name, t in v.items()}
            elif k == "_modules":
                d[k] = {name: None if c is None else memo[id(c)] for name, c in v.items()}
            elif k in _HOOK_DICTS:
                d[k] = type(v)()
            else:
                d[k] = _value(v, memo)
        d["training"] = False
        memo[id(m)].__dict__.update(d)
    return memo[id(model)]  # type: ignore[no-any-return]


def _private_twin(t: torch.Tensor) -> torch.Tensor:
    """The structural copy's version of a user tensor: a parameter itself (see :func:`trace`),
    any other tensor a detached clone (a forward may read and update a buffer's value)."""
    if isinstance(t, torch.nn.Parameter):
        return t
    if t.is_meta:
        return _meta_twin(t)
    c = t.detach().clone()
    return c.requires_grad_() if t.requires_grad and c.is_floating_point() else c


def clear_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """Remove every hook from a *copy*: the user's hooks (and their side effects) stay theirs."""
    for m in modules(model):
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None)
            if d:
                d.clear()
    return model


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t, device="meta")``; on a meta ``t`` that goes through a slow Python
    decomposition (models built on meta have thousands of tensors), so contiguous ones take
    the equivalent ``empty_strided``."""
    if t.device.type == "meta" and t.is_contiguous() and type(t) in (torch.Tensor, torch.nn.Parameter):
        return _like(t)  # the same empty_strided as fastshape
    return torch.empty_like(t, device="meta")


def _meta_twin(t: torch.Tensor) -> torch.Tensor:
    """``t`` on meta, a Parameter (with its ``requires_grad``) if ``t`` is one."""
    m = _meta_like(t)
    return torch.nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else m


def named_modules(model: torch.nn.Module, remove_duplicate: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """``list(model.named_modules(remove_duplicate=...))``, walked without recursion.

    ``nn.Module.named_modules`` nests one generator per level, so a walk costs depth x modules
    steps (minutes for a 5,000-level model) and fails past the recursion limit; this one is
    linear and has no depth limit.
    """
    out: list[tuple[str, torch.nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, torch.nn.Module]] = [("", model)]
    while stack:
        name, m = stack.pop()
        if remove_duplicate:
            if id(m) in seen:
                continue
            seen.add(id(m))
        out.append((name, m))
        kids = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
        stack.extend(reversed(kids))
    return out


def modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``list(model.modules())`` without recursion (see :func:`named_modules`)."""
    return [m for _, m in named_modules(model)]


def tree_depth(model: torch.nn.Module) -> int:
    """Nesting depth of the module tree (1 for a module without children), walked iteratively."""
    best, stack, seen = 0, [(model, 1)], {id(model)}
    while stack:
        m, d = stack.pop()
        best = max(best, d)
        for c in m._modules.values():
            if c is not None and id(c) not in seen:
                seen.add(id(c))
                stack.append((c, d + 1))
    return best


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _meta_like(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


_ATOMIC = (int, float, bool, str, bytes, type(None))


_EMPTY_CONTAINERS = (dict, OrderedDict, set, list)


#: class -> copies through the default protocol.  Process-wide and unlocked on purpose: the value
#: is a pure function of the class, and a dict get/set is atomic, so threads that race at worst
#: compute the same bool twice.
_plain_cache: dict[type, bool] = {}


def _plain(cls: type) -> bool:
    """The class copies through ``nn.Module``'s default protocol."""
    ok = _plain_cache.get(cls)
    if ok is None:
        ok = (
            getattr(cls, "__deepcopy__", None) is None
            and cls.__reduce_ex__ is object.__reduce_ex__  # type: ignore[comparison-overlap]
            and cls.__reduce__ is object.__reduce__  # type: ignore[comparison-overlap]
            and cls.__getstate__ is nn.Module.__getstate__  # type: ignore[comparison-overlap]
            and getattr(cls, "__getnewargs_ex__", None) is None
            and getattr(cls, "__getnewargs__", None) is None
            and cls not in copyreg.dispatch_table
            and "__slots__" not in cls.__dict__
        )
        _plain_cache[cls] = ok
    return ok


def _value(v: Any, memo: dict[int, Any]) -> Any:
    t = type(v)
    if t in _ATOMIC:
        return v
    if t is tuple and all(type(x) in _ATOMIC for x in v):
        return v  # deepcopy returns such a tuple itself
    hit = memo.get(id(v), memo)
    if hit is not memo:
        return hit
    if t in _EMPTY_CONTAINERS and not v:
        y: Any = t()
        memo[id(v)] = y
        return y
    if isinstance(v, nn.Module):
        return deepcopy_modules(v, memo)
    return copy.deepcopy(v, memo)


def _param_dict(d: Any, memo: dict[int, Any]) -> Any:
    if type(d) is not dict:
        return copy.deepcopy(d, memo)
    out = {k: _value(v, memo) for k, v in d.items()}
    memo[id(d)] = out
    return out


def deepcopy_modules(m: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """Same result as ``copy.deepcopy(m, memo)``, faster for ordinary modules."""
    hit = memo.get(id(m))
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    cls = type(m)
    if not _plain(cls):
        return copy.deepcopy(m, memo)  # type: ignore[no-any-return]
    new = cls.__new__(cls)
    memo[id(m)] = new
    state = m.__getstate__()
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k in ("_parameters", "_buffers", "_modules"):
            out[k] = _param_dict(v, memo)
        else:
            out[k] = _value(v, memo)
    new.__setstate__(out)
    return new

