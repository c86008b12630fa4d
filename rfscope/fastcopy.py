"""``copy.deepcopy`` for module trees, without its per-attribute overhead.

:func:`rfscope.trace.meta_copy` deep-copies the user's model with a memo that
maps every parameter and buffer to a meta tensor.  ``copy.deepcopy`` spends most
of its time on the bookkeeping every ``nn.Module`` carries (a dozen hook
dictionaries, parameter/buffer/child dicts) through the generic ``__reduce_ex__``
protocol.  :func:`deepcopy_modules` does what ``deepcopy`` does for a module —
``cls.__new__``, memo entry, deep copy of ``__getstate__()``, ``__setstate__`` —
but copies empty containers, scalars and memo hits directly.  A module class
with its own copy protocol (``__deepcopy__``, ``__reduce__``, ``__getstate__``,
``__getnewargs__``, a ``copyreg`` entry), and every non-module value, goes
through ``copy.deepcopy`` with the same memo, so the result is the same.
"""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any

import torch.nn as nn

__all__ = ["deepcopy_modules"]

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
