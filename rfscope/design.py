"""Helpers for choosing hyper-parameters: RF of a layer spec, dilation schedules, RF assertions.

Everything here is one spatial dimension at a time (call once per dimension for
anisotropic designs) and uses the exact window algebra of :mod:`rfscope.core.rf`, so
dilation holes and fractional strides are exact, not approximated.

>>> from rfscope import design
>>> design.stack_rf([("conv", 3), ("conv", 3), ("pool", 2, 2), ("conv", 3)]).size
10
>>> design.dilation_schedule(17)
(1, 3, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from rfscope.core import rf as _rf

__all__ = ["Layer", "StackRF", "stack_rf", "stack_rfs", "plain_depth", "dilation_schedule", "assert_rf"]

_KINDS = ("conv", "pool", "conv_transpose", "upsample")


@dataclass(frozen=True)
class Layer:
    """One layer of a 1-D stack spec.

    ``kind`` is ``"conv"`` or ``"pool"`` (same RF rule), ``"conv_transpose"``, or
    ``"upsample"`` (nearest, ``k`` is the scale factor: a transposed conv with ``k = s``).
    ``p`` is the left/top padding.  A tuple ``("conv", k, s, p, d)`` (trailing values
    optional) means the same.
    """

    kind: str
    k: int
    s: int = 1
    p: int = 0
    d: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"layer kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        if self.k < 1 or self.s < 1 or self.d < 1 or self.p < 0:
            raise ValueError(f"{self}: k, s, d must be >= 1 and p >= 0")

    def apply(self, axis: _rf.Axis) -> _rf.Axis:
        if self.kind in ("conv", "pool"):
            return _rf.conv(axis, self.k, self.s, self.p, self.d)
        if self.kind == "conv_transpose":
            return _rf.conv_transpose(axis, self.k, self.s, self.p, self.d)
        return _rf.conv_transpose(axis, self.k, self.k)


@dataclass(frozen=True)
class StackRF:
    """RF after a layer of a 1-D stack.

    ``size``/``stride``/``padding``/``center`` as in :class:`rfscope.RF`; ``coverage`` is the
    smallest fraction of a unit's bounding box it sees; ``holes`` the unseen offsets of unit 0;
    ``sizes`` the bounding box per phase (several with fractional strides); ``axis`` the exact map.
    """

    layer: Layer | None
    size: int
    stride: Fraction
    padding: Fraction
    center: Fraction
    coverage: Fraction
    holes: tuple[int, ...]
    sizes: tuple[int, ...]
    axis: _rf.Axis


def _layer(x: Layer | Sequence[Any]) -> Layer:
    if isinstance(x, Layer):
        return x
    if not isinstance(x, (tuple, list)) or not x or not isinstance(x[0], str):
        raise ValueError(f"stack entry {x!r} is not a Layer or a tuple like ('conv', k, s, p, d)")
    if len(x) > 5:
        raise ValueError(f"stack entry {x!r} has more than (kind, k, s, p, d)")
    return Layer(x[0], *(int(v) for v in x[1:]))


def _summary(layer: Layer | None, a: _rf.Axis) -> StackRF:
    return StackRF(layer, a.size, a.stride, a.padding, a.center, _rf.coverage(a), tuple(_rf.holes(a)),
                   a.sizes, a)


def stack_rfs(spec: Sequence[Layer | Sequence[Any]]) -> list[StackRF]:
    """RF after every layer of ``spec`` (see :func:`stack_rf`); the input comes first.

    >>> [r.size for r in stack_rfs([("conv", 3, 1, 1, 2)] * 3)]
    [1, 5, 9, 13]
    """
    a = _rf.IDENTITY
    out = [_summary(None, a)]
    for x in spec:
        lay = _layer(x)
        a = lay.apply(a)
        out.append(_summary(lay, a))
    return out


def stack_rf(spec: Sequence[Layer | Sequence[Any]]) -> StackRF:
    """RF of the last layer of a 1-D stack, without building the model.

    Entries are :class:`Layer` or tuples ``(kind, k, s=1, p=0, d=1)``.

    >>> r = stack_rf([("conv", 3, 1, 1, 2)] * 3)        # three 3-taps convs, dilation 2
    >>> r.size, r.coverage, r.holes                     # gridding: odd offsets never seen
    (13, Fraction(7, 13), (1, 3, 5, 7, 9, 11))
    >>> r = stack_rf([("conv", 7, 2, 3), ("pool", 3, 2, 1)])   # ResNet stem
    >>> r.size, r.stride, r.padding
    (11, Fraction(4, 1), Fraction(5, 1))
    >>> stack_rf([("conv", 3, 1, 1), ("conv_transpose", 3, 2, 1)]).sizes   # phase-dependent
    (3, 4)
    """
    return stack_rfs(spec)[-1]


def plain_depth(target_rf: int, k: int = 3) -> int:
    """Smallest number of stride-1, undilated ``k``-tap convs whose RF reaches ``target_rf``.

    >>> plain_depth(17), plain_depth(17, k=5)
    (8, 4)
    """
    _check_target(target_rf, k)
    return max(0, -(-(target_rf - 1) // (k - 1)))


def _check_target(target_rf: int, k: int) -> None:
    if k < 2:
        raise ValueError(f"k={k}: a kernel needs at least 2 taps to grow the RF")
    if target_rf < 1:
        raise ValueError(f"target_rf={target_rf} must be >= 1")


def dilation_schedule(target_rf: int, k: int = 3, max_depth: int = 32) -> tuple[int, ...]:
    """Fewest stride-1 ``k``-tap dilated convs that reach ``target_rf`` with no holes.

    Depth: ``n`` layers see at most ``k**n`` distinct pixels, so full coverage needs
    ``k**n >= target_rf``; that depth is reached by keeping every intermediate layer dense
    (each rate at most the RF so far; the HDC condition of Wang et al. 2018).  Among those
    dense schedules of that depth, the one with the smallest largest rate is returned (the
    last rate trimmed so the RF overshoots the target least, rates in increasing order); its
    coverage is checked exactly.

    >>> dilation_schedule(17), dilation_schedule(27), dilation_schedule(35)
    ((1, 3, 4), (1, 3, 9), (1, 3, 6, 7))
    >>> stack_rf([("conv", 3, 1, r, r) for r in dilation_schedule(17)]).coverage
    Fraction(1, 1)
    """
    _check_target(target_rf, k)
    if target_rf == 1:
        return ()
    n = 1
    while k**n < target_rf:
        n += 1
        if n > max_depth:
            raise ValueError(f"target_rf={target_rf} needs more than max_depth={max_depth} layers")
    need = -(-(target_rf - 1) // (k - 1))  # sum of rates
    for m in range(1, need + 1):
        rates: list[int] = []
        size = 1
        for _ in range(n):
            r = min(m, size)
            rates.append(r)
            size += (k - 1) * r
        if sum(rates) >= need:
            rates[-1] -= sum(rates) - need
            if rates[-1] < 1:  # pragma: no cover - impossible: the trimmed rate stays >= previous sum
                continue
            rates.sort()  # swapping a larger rate after a smaller one keeps every layer dense
            res = stack_rf([("conv", k, 1, 0, r) for r in rates])
            if res.coverage != 1 or res.size < target_rf:  # pragma: no cover - guarded by the theory
                raise AssertionError(f"internal: schedule {rates} is not dense")
            return tuple(rates)
    raise AssertionError("unreachable")  # pragma: no cover


def _per_dim(v: int | Sequence[int] | None, n: int, what: str) -> tuple[int, ...] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(x) for x in v)
    if len(t) != n:
        raise ValueError(f"{what}={v!r} gives {len(t)} values for {n} spatial dims")
    return t


def assert_rf(
    model: torch.nn.Module,
    layer: str,
    *,
    at_least: int | Sequence[int] | None = None,
    at_most: int | Sequence[int] | None = None,
    full_coverage: bool = False,
    input_shape: Sequence[int] | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> Any:
    """Assert, in your own tests, that ``layer``'s RF lies in a range; returns its :class:`rfscope.RF`.

    ``at_least``/``at_most`` are a size or one size per spatial dim; ``full_coverage``
    also requires no dilation holes.  A ``global`` layer sees the whole input (it passes
    any ``at_least`` and fails any ``at_most``); an ``unknown`` one always fails.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    >>> assert_rf(net, "1", at_least=5, input_shape=(1, 3, 32, 32)).size
    (5, 5)
    >>> assert_rf(net, "1", at_least=7, input_shape=(1, 3, 32, 32))
    Traceback (most recent call last):
    AssertionError: layer '1' has RF 5x5, smaller than at_least 7x7 (dim 0: 5 < 7)
    """
    from rfscope.pipeline import analyze

    rep = analyze(model, input_shape, example_inputs=example_inputs)
    r = rep.rf(layer)
    n = len(r.dims)
    lo, hi = _per_dim(at_least, n, "at_least"), _per_dim(at_most, n, "at_most")
    shown = "x".join(map(str, r.size))
    if r.status == "unknown":
        raise AssertionError(f"layer {layer!r} has an unknown RF: {r.reason}")
    if r.status == "global":
        if hi is not None:
            raise AssertionError(f"layer {layer!r} is global (sees the whole input), larger than at_most "
                                 f"{'x'.join(map(str, hi))}")
        return r
    for i, s in enumerate(r.size):
        if lo is not None and s < lo[i]:
            raise AssertionError(f"layer {layer!r} has RF {shown}, smaller than at_least "
                                 f"{'x'.join(map(str, lo))} (dim {i}: {s} < {lo[i]})")
        if hi is not None and s > hi[i]:
            raise AssertionError(f"layer {layer!r} has RF {shown}, larger than at_most "
                                 f"{'x'.join(map(str, hi))} (dim {i}: {s} > {hi[i]})")
    if full_coverage:
        bad = [(i, c) for i, c in enumerate(r.coverage) if c is not None and c < 1]
        if bad:
            i, c = bad[0]
            raise AssertionError(f"layer {layer!r} has dilation holes: coverage {c} along dim {i}")
    return r
