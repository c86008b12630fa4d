"""What a tensor in the traced graph knows about the input: its layout and per-axis RF.

A :class:`TensorRF` says which tensor dimensions are spatial (and which input
axis each one indexes), and for every spatial axis of the input either an exact
:class:`~rfscope.core.rf.Axis`, or :class:`Global` (each unit sees the whole input
along that axis).  A tensor whose RF cannot be stated exactly is
:func:`unknown`, with a reason; plugins never guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

from rfscope.core.rf import IDENTITY, Axis, MisalignedError
from rfscope.core.rf import union as _union_axis

__all__ = [
    "Merged",
    "DimTag",
    "Global",
    "AxisState",
    "TensorRF",
    "Const",
    "CONST",
    "unknown",
    "merge",
    "Status",
    "map_axis",
]

Status = Literal["exact", "global", "unknown"]


@dataclass(frozen=True)
class Merged:
    """A tensor dim made by flattening several dims, at least one of them spatial.

    ``parts`` lists the flattened dims in row-major order as ``(tag, size)`` with
    ``tag`` ``None`` or an input axis, so a later reshape can split them back.
    """

    parts: tuple[tuple[int | None, int], ...]

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(t for t, _ in self.parts if t is not None)


#: Per tensor dimension: ``None`` (batch/channel/feature), an input axis index, or :class:`Merged`.
DimTag: TypeAlias = "None | int | Merged"


@dataclass(frozen=True)
class Global:
    """Every unit sees the whole input along this axis.

    ``local`` is the exact RF through the spatially local paths only (what papers
    quote for networks with SE blocks), or ``None``.  ``None`` means no such path
    exists unless ``local_why`` is set: then local paths exist but their union is not
    one exact RF (branches with different strides met after the global op), and
    ``local_why`` says so.  The two must never be confused: a later merge with one
    aligned branch would otherwise report that branch's RF as the local one.
    """

    local: Axis | None = None
    local_why: str | None = None


AxisState: TypeAlias = "Axis | Global"


@dataclass(frozen=True)
class TensorRF:
    """Layout and receptive field of one tensor."""

    dims: tuple[DimTag, ...]
    axes: tuple[AxisState, ...] = ()
    reason: str | None = None  # set only for unknown tensors
    #: positions of a spatial dim were scrambled (e.g. cat along tokens); local ops are unknown,
    #: a global op over those dims is still exactly global.
    scrambled: frozenset[int] = field(default_factory=frozenset)
    #: per-position form (:class:`rfscope.core.table.Table`) when the periodic one cannot say it;
    #: ``dims`` are then all ``None`` and ``axes`` empty
    table: Any = None

    @property
    def status(self) -> Status:
        if self.table is not None:
            return "global" if self.table.full and self.table.local is not None else "exact"
        if self.reason is not None or self.scrambled:
            return "unknown"
        if any(isinstance(a, Global) for a in self.axes):
            return "global"
        return "exact"

    @property
    def why(self) -> str | None:
        """Why the RF is unknown (``None`` when it is known)."""
        if self.reason is not None:
            return self.reason
        if self.scrambled:
            ax = ", ".join(str(a) for a in sorted(self.scrambled))
            return f"positions along axis {ax} were concatenated or shuffled; only a global op is exact"
        return None

    def with_axes(self, axes: Sequence[AxisState]) -> TensorRF:
        return replace(self, axes=tuple(axes))

    def with_dims(self, dims: Sequence[DimTag]) -> TensorRF:
        return replace(self, dims=tuple(dims))


@dataclass(frozen=True)
class Const:
    """A value that does not depend on the input (Python scalars, shapes, parameters)."""


CONST = Const()


def unknown(dims: Sequence[DimTag], reason: str) -> TensorRF:
    return TensorRF(tuple(dims), (), reason)


def input_rf(ndim: int, n_spatial: int, dims: Sequence[int | None] | None = None) -> TensorRF:
    """State of a model input: every unit sees its own position along each of the ``n_spatial`` input axes.

    ``dims`` tags each tensor dim with the input axis it indexes, or ``None`` (batch, channels,
    features), wherever the positional dims sit (``(None, 0, 1, None)`` for NHWC); without it
    the input is laid out as ``(N, C, *spatial)``.  ``n_spatial=0`` is an input with no
    positional axis (a feature vector): its units see no position, and no RF applies.

    >>> input_rf(4, 2).dims, input_rf(4, 2, (None, 0, 1, None)).dims, input_rf(2, 0).axes
    ((None, None, 0, 1), (None, 0, 1, None), ())
    """
    if dims is None:
        tags: list[DimTag] = [None] * (ndim - n_spatial)
        tags.extend(range(n_spatial))
    else:
        tags = list(dims)
        if len(tags) != ndim or sorted(t for t in dims if t is not None) != list(range(n_spatial)):
            raise ValueError(f"dims {tuple(dims)} must tag {ndim} dims with each of the {n_spatial} axes once")
    return TensorRF(tuple(tags), tuple(IDENTITY for _ in range(n_spatial)))


def _union_state(a: AxisState, b: AxisState) -> AxisState:
    if isinstance(a, Global) or isinstance(b, Global):
        for g in (a, b):
            if isinstance(g, Global) and g.local_why is not None:
                return g  # a local path of unknown RF stays unknown whatever joins it
        la = a.local if isinstance(a, Global) else a
        lb = b.local if isinstance(b, Global) else b
        if la is None:
            return Global(lb)
        if lb is None:
            return Global(la)
        try:
            return Global(_union_axis(la, lb))
        except MisalignedError as e:
            return Global(None, f"local paths misaligned ({e})")
    return _union_axis(a, b)


def map_axis(a: AxisState, fn: Callable[[Axis], Axis]) -> AxisState:
    """Apply a per-axis index map to an exact axis, or to a global axis's local path.

    A global axis stays global; its local RF moves with the positions just as an exact one
    would (slicing ``x[..., ::2]`` after a GroupNorm doubles the local stride).
    """
    if not isinstance(a, Global):
        return fn(a)
    if a.local is None:
        return a  # no local path, or one of unknown RF: nothing to move
    try:
        return Global(fn(a.local))
    except MisalignedError as e:
        return Global(None, f"local path: {e}")


def _empty_units(s: TensorRF) -> bool:
    """Some unit sees no pixel along one exact axis while another axis exists (multi-axis only)."""
    return len(s.axes) > 1 and any(w.empty for a in s.axes if isinstance(a, Axis) for w in a.windows)


def merge(states: Sequence[TensorRF], dims: Sequence[DimTag], what: str = "merge") -> TensorRF:
    """Union of several tensors' RFs (each output unit reads the same unit of every input).

    Misaligned inputs (different strides) give an unknown result naming ``what``.
    """
    for s in states:
        if s.reason is not None:
            return unknown(dims, s.reason)
    if not states:
        return TensorRF(tuple(dims), ())
    if len(states) > 1:
        for s in states:
            if _empty_units(s):
                # a unit empty along one axis sees nothing at all, so that branch adds nothing on the
                # other axes either: the union is no longer a product of per-axis windows
                return unknown(dims, f"{what}: a branch has units that see no pixel along some axis "
                               "(transposed conv or upsampling with kernel < stride); per-axis union is inexact")
    n = max(len(s.axes) for s in states)
    out: list[AxisState] = []
    for ax in range(n):
        cur: AxisState | None = None
        for s in states:
            if ax >= len(s.axes):
                continue
            st = s.axes[ax]
            if cur is None:
                cur = st
                continue
            try:
                cur = _union_state(cur, st)
            except MisalignedError as e:
                return unknown(dims, f"misaligned {what} along axis {ax}: {e}")
        assert cur is not None
        out.append(cur)
    scr = frozenset().union(*(s.scrambled for s in states))
    # a global axis sees the whole input whatever the positions were
    scr = frozenset(a for a in scr if not isinstance(out[a], Global))
    return TensorRF(tuple(dims), tuple(out), None, scr)


def make_global(state: TensorRF, axes: Sequence[int], keep_local: bool) -> TensorRF:
    """Mark input ``axes`` as global; keep the current RF as the local one if asked."""
    if state.reason is not None:
        return state
    new = list(state.axes)
    for a in axes:
        cur = new[a]
        if not keep_local:
            new[a] = Global(None)  # no local path survives (e.g. global pooling after an SE block)
        elif not isinstance(cur, Global):  # an axis already global keeps its local path
            new[a] = Global(cur)
    scr = state.scrambled - set(axes)
    return replace(state, axes=tuple(new), scrambled=frozenset(scr))
