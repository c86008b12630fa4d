"""Ops that pick elements by their values: topk, sort, argsort, argmax, argmin, and max unpooling
(which puts each value where its max pool's indices say).

Which input element lands at each output position (or which index is returned) is decided by the
data, like ``nonzero`` or NMS (:mod:`rfscope.trace.datadep`), but the output's shape is not, so
shapes propagate on meta as usual.  No rule follows such a selection: every output is ``unknown``
with a reason that says the data decides (the nodes after it inherit that reason), rather than
"no plugin" or "no rule for per-position inputs".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.registry import Method, Registry

aten = torch.ops.aten

#: name the reason gives -> targets (torch functions, tensor methods, ATen overloads)
SELECTIONS: dict[str, tuple[Any, ...]] = {
    "topk": (torch.topk, Method("topk"), aten.topk.default),
    "sort": (torch.sort, Method("sort"), torch.msort, Method("msort"), aten.sort.default, aten.sort.stable),
    "argsort": (torch.argsort, Method("argsort"), aten.argsort.default, aten.argsort.stable),
    "argmax": (torch.argmax, Method("argmax"), aten.argmax.default),
    "argmin": (torch.argmin, Method("argmin"), aten.argmin.default),
    "max_unpool": (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, F.max_unpool1d, F.max_unpool2d,
                   F.max_unpool3d, aten.max_unpool2d.default, aten.max_unpool3d.default),
}


def reason(op: str) -> str:
    """Why the output of ``op`` is unknown."""
    if op == "max_unpool":  # SegNet's decoder: a value lands where its window's maximum was
        return "data-dependent selection: the data decides where max_unpool puts each value (the pooling indices)"
    what = "element" if op in ("argmax", "argmin") else "elements"
    return f"data-dependent selection: the data decides which {what} {op} picks"


def _selection(op: str) -> Any:
    def rule(ctx: OpContext) -> Any:
        raise Unsupported(reason(op))

    return rule


def register(reg: Registry) -> None:
    for op, targets in SELECTIONS.items():
        rule = _selection(op)
        reg.add(op, targets, rf=rule, table=rule)
