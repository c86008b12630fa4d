"""The public receptive-field value returned by :meth:`Report.rf`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from rfscope.core.rf import Axis, coverage
from rfscope.core.state import Global, Status, TensorRF

__all__ = ["RF", "AxisInfo"]


def _short(x: Fraction | int | None) -> str:
    """``32``, ``1/2`` or ``None``: a readable number for ``repr``."""
    if x is None:
        return "None"
    if isinstance(x, Fraction) and x.denominator != 1:
        return f"{x.numerator}/{x.denominator}"
    return str(int(x))


def _repr_tuple(xs: Sequence[Fraction | int | None]) -> str:
    return "(" + ", ".join(_short(x) for x in xs) + ("," if len(xs) == 1 else "") + ")"


def _num(x: Fraction | int | None) -> float | int | None:
    if x is None:
        return None
    if isinstance(x, Fraction):
        return int(x) if x.denominator == 1 else float(x)
    return x


@dataclass(frozen=True)
class AxisInfo:
    """One spatial dimension's RF.

    Unit ``i`` sees input pixels ``[i*stride - padding, i*stride - padding + size - 1]``
    (exactly when ``phases == 1``; with a fractional stride, ``sizes`` and
    :meth:`RF.window` give each phase exactly).  For a global axis, ``size`` is the
    input extent and ``exact`` is ``None``.
    """

    size: int
    stride: Fraction | None
    padding: Fraction | None
    center: Fraction | None
    exact: Axis | None

    def __repr__(self) -> str:  # the exact windows are bit masks that can be thousands of digits long
        phases = self.exact.period if self.exact is not None else None
        return (f"AxisInfo(size={self.size}, stride={_short(self.stride)}, padding={_short(self.padding)}, "
                f"center={_short(self.center)}, phases={phases})")


@dataclass(frozen=True)
class RF:
    """Receptive field of one tensor, per spatial dimension.

    >>> import torch.nn as nn, rfscope
    >>> r = rfscope.analyze(nn.Conv2d(1, 1, 3, stride=2, padding=1), input_shape=(1, 1, 8, 8)).rf("output")
    >>> r.size, r.stride, r.padding, r.status
    ((3, 3), (Fraction(2, 1), Fraction(2, 1)), (Fraction(1, 1), Fraction(1, 1)), 'exact')
    """

    status: Status
    dims: tuple[AxisInfo, ...]
    reason: str | None = None
    local: RF | None = None
    #: the per-position table (:class:`rfscope.core.table.Table`) of a tensor whose positions
    #: were moved around (windows, class tokens): ``size`` is then the largest over its elements,
    #: ``stride``/``padding`` are ``None``, and :meth:`window` takes a full tensor index
    table: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        """Short and bounded, e.g. ``RF(status='exact', size=(427, 427), stride=(32, 32), padding=(213, 213))``.

        A global RF shows its local part (``local=None``: no spatially local path);
        an unknown one, its reason.
        """
        if self.status == "unknown":
            return f"RF(status='unknown', reason={self.reason!r})"
        if self.table is not None:
            return f"RF(status={self.status!r}, size<={_repr_tuple(self.size)}, per-position table)"
        out = f"RF(status={self.status!r}, size={_repr_tuple(self.size)}, stride={_repr_tuple(self.stride)}, " \
              f"padding={_repr_tuple(self.padding)}"
        if any(d.exact is not None and d.exact.period > 1 for d in self.dims):
            out += f", phases={_repr_tuple([d.exact.period if d.exact is not None else None for d in self.dims])}"
        if self.status == "global":
            out += f", local={self.local!r}"
        return out + ")"

    __str__ = __repr__

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.dims)

    @property
    def stride(self) -> tuple[Fraction | None, ...]:
        return tuple(d.stride for d in self.dims)

    @property
    def padding(self) -> tuple[Fraction | None, ...]:
        return tuple(d.padding for d in self.dims)

    @property
    def center(self) -> tuple[Fraction | None, ...]:
        return tuple(d.center for d in self.dims)

    @property
    def coverage(self) -> tuple[Fraction | None, ...]:
        """Per dimension, the smallest fraction of a unit's bounding box it really sees."""
        return tuple(coverage(d.exact) if d.exact is not None else None for d in self.dims)

    @property
    def sizes(self) -> tuple[tuple[int, ...] | None, ...]:
        """Per dimension, the bounding-box size of each phase (fractional strides)."""
        return tuple(d.exact.sizes if d.exact is not None else None for d in self.dims)

    def window(self, index: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
        """Inclusive pixel bounds ``(lo, hi)`` that unit ``index`` sees, per dimension.

        For a per-position table, ``index`` indexes every dim of the tensor, the result is the
        bounding box of what that element sees, and ``None`` when it sees nothing (a class token
        before the first attention).
        """
        if self.table is not None:
            return self.table.box(tuple(index))  # type: ignore[no-any-return]
        out = []
        for d, i in zip(self.dims, index, strict=False):
            if d.exact is None:
                raise ValueError(f"RF is {self.status}; no per-unit window")
            w = d.exact.window(i)
            out.append((w.lo, w.hi))
        return tuple(out)

    def pixels(self, index: Sequence[int]) -> tuple[list[int], ...]:
        """Exact pixels (holes excluded) unit ``index`` sees, per dimension (for a table: of each
        box the element sees, merged per axis)."""
        if self.table is not None:
            boxes = self.table.boxes(tuple(index))
            return tuple(sorted({x for b in boxes for x in range(b[a][0], b[a][1] + 1)})
                         for a in range(len(self.dims)))
        out = []
        for d, i in zip(self.dims, index, strict=False):
            if d.exact is None:
                raise ValueError(f"RF is {self.status}; no per-unit window")
            out.append(d.exact.window(i).pixels())
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "size": list(self.size),
            "stride": [_num(x) for x in self.stride],
            "padding": [_num(x) for x in self.padding],
            "center": [_num(x) for x in self.center],
            "status": self.status,
        }
        if any(x.exact is not None for x in self.dims):
            d["coverage"] = [_num(c) for c in self.coverage]
            if any(x.exact is not None and x.exact.period > 1 for x in self.dims):
                d["phase_sizes"] = [list(s) if s is not None else None for s in self.sizes]
        if self.status == "global":
            if self.local is None:
                d["local"] = None  # no spatially local path at all
            elif self.local.status == "unknown":
                d["local"] = {"status": "unknown", "reason": self.local.reason}
            else:
                d["local"] = {
                    k: v for k, v in self.local.to_dict().items() if k in ("size", "stride", "padding", "center")
                }
        if self.status == "unknown":
            d["reason"] = self.reason
        if self.table is not None:
            d["per_position"] = True
        return d

    # ------------------------------------------------------------------
    @classmethod
    def from_state(cls, st: TensorRF, input_size: Sequence[int]) -> RF:
        if st.table is not None:
            t = st.table
            if st.status == "global":  # seen whole through a global op; the local part per position
                dims = tuple(AxisInfo(ext, None, None, Fraction(ext - 1, 2), None) for ext in input_size)
                loc = t.local
                blank = tuple(AxisInfo(0, None, None, None, None) for _ in input_size)
                local = cls("unknown", blank, loc) if isinstance(loc, str) else None if loc.all_empty() else \
                    cls("exact", tuple(AxisInfo(s, None, None, None, None) for s in loc.max_sizes()), None, None, loc)
                return cls("global", dims, None, local, t)
            sizes = t.max_sizes()
            return cls("exact", tuple(AxisInfo(s, None, None, None, None) for s in sizes), None, None, t)
        if st.status == "unknown":
            n = len(input_size)
            dims = tuple(AxisInfo(0, None, None, None, None) for _ in range(n))
            return cls("unknown", dims, st.why)
        infos: list[AxisInfo] = []
        local_infos: list[AxisInfo] = []
        made: dict[Axis, AxisInfo] = {}  # equal axes (a square RF) share one frozen info
        has_local = True
        local_why = next((a.local_why for a in st.axes if isinstance(a, Global) and a.local_why), None)
        for a, ext in zip(st.axes, input_size, strict=False):
            if isinstance(a, Global):
                loc = a.local
                infos.append(
                    AxisInfo(
                        ext,
                        loc.stride if loc is not None else None,
                        loc.padding if loc is not None else None,
                        Fraction(ext - 1, 2),
                        None,
                    )
                )
                if loc is None:
                    has_local = False
                else:
                    local_infos.append(_info(loc, made))
            else:
                info = _info(a, made)  # frozen: one object serves both lists
                infos.append(info)
                local_infos.append(info)
        status = st.status
        local = cls("exact", tuple(local_infos)) if status == "global" and has_local else None
        if local_why is not None:  # local paths exist, but their RF is not one exact value
            blank = tuple(AxisInfo(0, None, None, None, None) for _ in input_size)
            local = cls("unknown", blank, local_why)
        return cls(status, tuple(infos), None, local)


def _info(a: Axis, made: dict[Axis, AxisInfo]) -> AxisInfo:
    info = made.get(a)
    if info is None:
        info = made[a] = AxisInfo(a.size, a.stride, a.padding, a.center, a)
    return info


def _fmt(x: Fraction | int | None, none: str = "-") -> str:
    """``3``, ``1/2``, or ``none`` for a missing value (the table's ``-``; diagrams use ``?``)."""
    if x is None:
        return none
    if isinstance(x, Fraction) and x.denominator != 1:
        return f"{x.numerator}/{x.denominator}"
    return str(int(x))


def _collapse(parts: list[str]) -> str:
    """``["all", "all"]`` -> ``"all"``, ``["-", "-"]`` -> ``"-"``, else ``"3x3"``."""
    if parts and all(p == parts[0] for p in parts) and parts[0] in ("all", "-"):
        return parts[0]
    return "x".join(parts)


def _fmt_dims(xs: Any, sep: str = "x", none: str = "-") -> str:
    return sep.join(_fmt(x, none) for x in xs)
