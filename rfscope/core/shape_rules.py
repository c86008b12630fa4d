"""Shape rules for Python functions that are slow to run on meta tensors, checked per call signature.

A plugin may give the output of a slow Python function (Swin's window attention runs dozens
of tensor ops) directly with :func:`register_function_rule`; the shape pass uses the rule only
for call signatures where it has matched a real call (see :class:`_CheckedRule`).  The table is
process-wide, written under :data:`rfscope.core.locks.TRACE_LOCK`; each verdict is a fact about
one signature, so results never depend on what was analysed before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.fx.immutable_collections import immutable_dict, immutable_list

from rfscope.core.locks import TRACE_LOCK

__all__ = ["register_function_rule", "function_rule"]


_SEQS = (tuple, list, immutable_list)  # fx hands nested arguments over as immutable_list/dict


_MAPS = (dict, immutable_dict)


_ATOMS = (int, float, bool, str, type(None))


class _NoKey(Exception):
    """This call cannot be memoised."""


def _freeze(v: Any, tensors: dict[int, int]) -> Any:
    """A hashable, type-exact description of a call argument (tensors by metadata and aliasing)."""
    t = type(v)
    if t in _ATOMS:
        return (t, v)
    if t in _SEQS:
        return (t, tuple(_freeze(x, tensors) for x in v))
    if t in _MAPS:
        return (t, tuple((k, _freeze(x, tensors)) for k, x in v.items()))
    if (t is torch.Tensor or t is nn.Parameter) and v.device.type == "meta":
        alias = tensors.setdefault(id(v), len(tensors))
        return ("T", t, alias, _tensor_sig(v), v.storage_offset(), v._is_view())
    raise _NoKey


def _tensor_sig(v: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(v.shape), v.stride(), v.dtype, v.device.type, v.requires_grad)


class _CheckedRule:
    """A shape rule for a Python function from another library, trusted per call signature.

    The signature of a call is every argument as :func:`_freeze` describes it: the values of
    the non-tensor arguments, and each tensor's shape, strides, dtype, storage offset and
    aliasing.  The first call with a signature runs for real as well; the rule answers later
    calls with that signature only if its tensor had the real output's shape, strides, dtype
    and storage offset, and never otherwise.  A call whose arguments cannot be described
    (a real tensor, an arbitrary object) always runs for real.  So a rule that is right for
    ``f(x, s=1)`` is still checked for ``f(x, s=2)`` or another input size, and a library
    version whose function behaves differently costs time, never a wrong shape.

    The verdicts are kept for the process (repeated analyses of a model reuse them): a verdict
    is a fact about one signature, so results never depend on what was analysed before.
    Writes hold a lock; at most ``MAX_SIGNATURES`` are kept per rule, later ones are checked
    on every call.
    """

    MAX_SIGNATURES = 4096

    def __init__(self, rule: Callable[..., torch.Tensor | None]) -> None:
        self.rule = rule
        self.verdicts: dict[Any, bool] = {}
        self._lock = threading.Lock()

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: Callable[[], Any]) -> Any:
        try:
            ids: dict[int, int] = {}
            key = (_freeze(args, ids), _freeze(kwargs, ids))
            trusted = self.verdicts.get(key)
        except Exception:  # noqa: BLE001 - _NoKey, an unhashable value...: no signature, the real call decides
            return run()
        if trusted is False:
            return run()
        try:
            guess = self.rule(*args, **kwargs)
        except Exception:  # noqa: BLE001 - arguments the rule does not understand: the real call decides
            guess = None
        if not isinstance(guess, torch.Tensor):
            return run()
        if trusted:
            return guess
        out = run()
        ok = isinstance(out, torch.Tensor) and _out_sig(out) == _out_sig(guess)
        with self._lock:
            if len(self.verdicts) < self.MAX_SIGNATURES:
                self.verdicts[key] = ok
        return out


def _out_sig(t: torch.Tensor) -> tuple[Any, ...]:
    return (*_tensor_sig(t), t.storage_offset())


_FN_RULES: dict[Any, _CheckedRule] = {}  # written under rfscope.core.locks.TRACE_LOCK


def register_function_rule(fn: Any, rule: Callable[..., torch.Tensor | None]) -> None:
    """Use ``rule(*args, **kwargs)`` (a meta tensor, or ``None`` to decline) as the output of calls
    to ``fn`` during shape propagation, for each call signature once it has matched one real call
    with that signature (see ``_CheckedRule``)."""
    with TRACE_LOCK:
        if fn not in _FN_RULES or _FN_RULES[fn].rule is not rule:
            _FN_RULES[fn] = _CheckedRule(rule)


def _function_rules() -> dict[Any, _CheckedRule]:
    """A snapshot of the registered function rules (for rolling back a failing plugin)."""
    with TRACE_LOCK:
        return dict(_FN_RULES)


def _restore_function_rules(snapshot: dict[Any, _CheckedRule]) -> None:
    with TRACE_LOCK:
        _FN_RULES.clear()
        _FN_RULES.update(snapshot)



def function_rule(fn: Any) -> _CheckedRule | None:
    """The checked rule registered for ``fn``, if any."""
    return _FN_RULES.get(fn)

