"""``torch.einsum``, read from its equation.

An index kept in the output carries the dim tag of the operand dims it labels (two operands
giving it different positional tags: unsupported).  An index summed over (absent from the
output) that labels a positional dim mixes every position of that axis: each operand is made
``global`` along it *before* the union, with no local RF (conservative: the products mix the
summed positions with everything else).  Ellipsis, repeated indices within one operand
(diagonals), broadcasting of size-1 dims and two output dims indexing the same input axis are
``Unsupported``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import axes_of
from rfscope.core.positions import as_table, table_rule
from rfscope.core.registry import Registry
from rfscope.core.state import DimTag, TensorRF, make_global, merge


def _parse(ctx: OpContext) -> tuple[list[str], str, list[Any], list[Any]]:
    """(operand subscripts, output subscripts, operand states, operand values)."""
    eq = ctx.arg_values[0] if ctx.arg_values else ctx.kwarg_values.get("equation")
    if not isinstance(eq, str):
        raise Unsupported("einsum without an equation string")
    states, values = list(ctx.args[1:]), list(ctx.arg_values[1:])
    if len(values) == 1 and isinstance(values[0], (list, tuple)):  # einsum(eq, [a, b])
        states, values = list(states[0]), list(values[0])
    eq = eq.replace(" ", "")
    if "." in eq:
        raise Unsupported("einsum with ...")
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if not arrow:  # implicit output: the indices used once, in alphabetical order
        letters = "".join(ins)
        once = [c for c in set(letters) if letters.count(c) == 1]
        if any(c.isupper() for c in once) and any(c.islower() for c in once):
            raise Unsupported("einsum implicit output with mixed-case indices")
        rhs = "".join(sorted(once))
    if len(ins) != len(values) or not all(isinstance(v, torch.Tensor) for v in values):
        raise Unsupported("einsum operands do not match the equation")
    for sub, v in zip(ins, values, strict=True):
        if len(sub) != v.dim():
            raise Unsupported(f"einsum subscripts {sub!r} for a {v.dim()}-d operand")
        if len(set(sub)) != len(sub):
            raise Unsupported(f"einsum repeated index in {sub!r} (a diagonal)")
    if len(set(rhs)) != len(rhs) or not set(rhs) <= set("".join(ins)):
        raise Unsupported(f"einsum output subscripts {rhs!r}")
    return ins, rhs, states, values


def _einsum_rf(ctx: OpContext) -> TensorRF:
    ins, rhs, states, values = _parse(ctx)
    size: dict[str, int] = {}
    for sub, v in zip(ins, values, strict=True):
        for c, n in zip(sub, v.shape, strict=True):
            if size.setdefault(c, int(n)) != int(n):
                raise Unsupported(f"einsum index {c!r} broadcasts (sizes {size[c]} and {int(n)})")
    dims: list[DimTag] = []
    for c in rhs:
        tags = {s.dims[sub.index(c)] for sub, s in zip(ins, states, strict=True)
                if isinstance(s, TensorRF) and c in sub and s.dims[sub.index(c)] is not None}
        if len(tags) > 1:
            raise Unsupported(f"einsum index {c!r} labels different positional dims in two operands")
        dims.append(next(iter(tags)) if tags else None)
    used = axes_of(dims)
    if len(used) != len(set(used)):
        raise Unsupported("einsum: two output dims index the same input axis")
    parts: list[TensorRF] = []
    for sub, s in zip(ins, states, strict=True):
        if not isinstance(s, TensorRF):
            continue
        # an operand summed over a positional index sees all of it, with no local path through it;
        # the union then keeps the local paths of the operands that are not summed (as an SE gate does)
        summed = axes_of(t for c, t in zip(sub, s.dims, strict=True) if c not in rhs)
        parts.append(make_global(s, summed, keep_local=False))
    if not parts:
        raise Unsupported("no input tensor depends on the model input")
    return merge(parts, dims, f"einsum {ctx.node.name}")


def _einsum_macs(ctx: OpContext) -> int:
    """Products of two or more operands: one multiply-accumulate per index combination per
    extra operand (a single operand only sums or permutes: 0)."""
    ins, _, _, values = _parse(ctx)
    size = {c: int(n) for sub, v in zip(ins, values, strict=True) for c, n in zip(sub, v.shape, strict=True)}
    return math.prod(size.values()) * (len(values) - 1)


@table_rule(mixing=True)
def _einsum_table(ctx: OpContext) -> Any:
    """Per-position inputs: an output element sees, for each operand, the union over the indices
    summed away of the operand elements it reads."""
    ins, out, states, values = _parse(ctx)
    parts = []
    for sub, st, v in zip(ins, states, values, strict=True):
        if not isinstance(st, TensorRF):
            continue
        if len(set(sub)) != len(sub):
            raise Unsupported("einsum diagonal (a repeated index) in a token layout")
        t = as_table(ctx, st, v)
        summed = [i for i, c in enumerate(sub) if c not in out]
        if summed:
            t = t.reduce(summed, keepdim=False)
        kept = [c for c in sub if c in out]
        order = sorted(range(len(kept)), key=lambda i: out.index(kept[i]))
        present = {kept[i] for i in order}

        def place(c: torch.Tensor, order: list[int] = order, present: set[str] = present) -> torch.Tensor:
            c = c.permute(order)
            for j, letter in enumerate(out):
                if letter not in present:
                    c = c.unsqueeze(j)
            return c

        parts.append(t.apply(place))
    if not parts:
        raise Unsupported("no input table")
    return parts[0].union(*parts[1:], shape=ctx.out_shape)


def register(reg: Registry) -> None:
    reg.add("einsum", (torch.einsum,), rf=_einsum_rf, macs=_einsum_macs, table=_einsum_table)
