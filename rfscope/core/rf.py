"""Exact receptive-field algebra along one spatial axis (pure functions, no torch).

A feature map's units along one axis are described by an :class:`Axis`: unit
``i = m*period + phase`` sees the input pixels of ``windows[phase]`` shifted by
``m*step``.  With ``period == 1`` this is the classic ``(r, j, P)`` state of
Araujo et al. (Distill 2019): unit ``i`` sees ``[i*j - P, i*j - P + r - 1]``.
Fractional strides (transposed convolution, upsampling) need several phases;
dilation leaves holes, so every window is an exact set of pixels, stored as a
Python int used as a bit set.

>>> a = conv(IDENTITY, k=3, s=2, p=1)
>>> (a.size, a.stride, a.padding)
(3, Fraction(2, 1), Fraction(1, 1))
>>> t = conv_transpose(IDENTITY, k=4, s=2, p=1)
>>> (t.stride, [w.size for w in t.windows])
(Fraction(1, 2), [2, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from math import gcd

__all__ = [
    "Window",
    "Axis",
    "IDENTITY",
    "MisalignedError",
    "resample",
    "conv",
    "conv_transpose",
    "select",
    "union",
    "coverage",
    "covers",
    "holes",
]

#: Above this many phases we refuse to enumerate and the caller reports ``unknown``.
MAX_PERIOD = 4096


class MisalignedError(ValueError):
    """Two windows families cannot be merged into one periodic family."""


@dataclass(frozen=True)
class Window:
    """The pixels one unit sees along one axis: ``lo + b`` for each set bit ``b`` of ``mask``.

    ``mask == 0`` is the empty window (a unit that sees no pixel, e.g. a
    transposed conv with kernel smaller than its stride).
    """

    lo: int
    mask: int

    @property
    def empty(self) -> bool:
        return self.mask == 0

    @property
    def hi(self) -> int:
        return self.lo + self.mask.bit_length() - 1

    @property
    def size(self) -> int:
        """Bounding-box size in pixels (0 for the empty window)."""
        return self.mask.bit_length()

    @property
    def count(self) -> int:
        """Number of pixels actually seen (``< size`` when there are holes)."""
        return self.mask.bit_count()

    def shift(self, d: int) -> Window:
        return Window(self.lo + d, self.mask)

    def pixels(self) -> list[int]:
        m, out, b = self.mask, [], 0
        while m:
            if m & 1:
                out.append(self.lo + b)
            m >>= 1
            b += 1
        return out


EMPTY = Window(0, 0)


def _union_windows(ws: Iterable[Window]) -> Window:
    ws = [w for w in ws if not w.empty]
    if not ws:
        return EMPTY
    lo = min(w.lo for w in ws)
    mask = 0
    for w in ws:
        mask |= w.mask << (w.lo - lo)
    return Window(lo, mask)


@dataclass(frozen=True)
class Axis:
    """Exact map from unit index to seen pixels along one axis (see module docstring)."""

    period: int
    step: int
    windows: tuple[Window, ...]

    def window(self, i: int) -> Window:
        m, ph = divmod(i, self.period)
        return self.windows[ph].shift(m * self.step)

    @property
    def stride(self) -> Fraction:
        """Effective stride (jump): input pixels between neighbouring units."""
        return Fraction(self.step, self.period)

    @property
    def size(self) -> int:
        """Largest bounding-box size over phases."""
        return max(w.size for w in self.windows)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Bounding-box size of each phase (all equal unless the stride is fractional)."""
        return tuple(w.size for w in self.windows)

    @property
    def padding(self) -> Fraction:
        """Effective padding: unit 0's window starts at ``-padding``."""
        return Fraction(-self.windows[0].lo)

    @property
    def center(self) -> Fraction:
        """Centre of unit 0's window."""
        w = self.windows[0]
        return Fraction(w.lo + w.hi, 2)


IDENTITY = Axis(1, 1, (Window(0, 1),))


def _normalize(axis: Axis) -> Axis:
    """Return the same map with the smallest period."""
    q = axis.period
    for d in range(1, q):
        if q % d or (axis.step * d) % q:
            continue
        sh = axis.step * d // q
        if all(axis.windows[p + d] == axis.windows[p].shift(sh) for p in range(q - d)):
            return Axis(d, sh, axis.windows[:d])
    return axis


def resample(
    axis: Axis, deps: Callable[[int], Iterable[int]], base_period: int, base_shift: int
) -> Axis:
    """Apply a periodic local op: output unit ``i`` reads input units ``deps(i)``.

    ``deps(i + base_period)`` must equal ``deps(i) + base_shift`` (shifted
    element-wise).  Input units outside the tensor (padding) follow the
    infinite-lattice convention of the RF literature.
    """
    if base_period <= 0:
        raise ValueError("base_period must be positive")
    n = axis.period // gcd(axis.period, base_shift) if base_shift else 1
    out_period = n * base_period
    if out_period > MAX_PERIOD:
        raise MisalignedError(f"period {out_period} exceeds {MAX_PERIOD}")
    in_shift = n * base_shift
    step = in_shift * axis.step // axis.period
    wins = tuple(_union_windows(axis.window(u) for u in deps(i)) for i in range(out_period))
    return _normalize(Axis(out_period, step, wins))


def conv(axis: Axis, k: int, s: int = 1, p: int = 0, d: int = 1) -> Axis:
    """Convolution or pooling with kernel ``k``, stride ``s``, left padding ``p``, dilation ``d``.

    >>> conv(conv(IDENTITY, 3), 3, d=2).size
    7
    """
    return resample(axis, lambda i: [i * s - p + t * d for t in range(k)], 1, s)


def conv_transpose(axis: Axis, k: int, s: int = 1, p: int = 0, d: int = 1) -> Axis:
    """Transposed convolution: input unit ``u`` writes to outputs ``u*s - p + t*d``."""

    def deps(o: int) -> list[int]:
        return [(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0]

    return resample(axis, deps, s, 1)


def select(axis: Axis, i: int) -> Axis:
    """Every unit sees what unit ``i`` saw (indexing or broadcasting a single unit)."""
    return Axis(1, 0, (axis.window(i),))


def union(a: Axis, b: Axis) -> Axis:
    """Units of a merge (``+``, ``*``, ``cat`` along channels) see both windows.

    Raises :class:`MisalignedError` when the strides differ.
    """
    if a.step * b.period != b.step * a.period:  # the strides step/period differ (no Fractions: this runs per merge)
        raise MisalignedError(f"strides differ ({a.stride} vs {b.stride})")
    if a == b:
        return _normalize(a)  # a map united with itself
    q = a.period * b.period // gcd(a.period, b.period)
    if q > MAX_PERIOD:
        raise MisalignedError(f"period {q} exceeds {MAX_PERIOD}")
    step = a.step * q // a.period
    wins = tuple(_union_windows((a.window(i), b.window(i))) for i in range(q))
    return _normalize(Axis(q, step, wins))


def coverage(axis: Axis) -> Fraction:
    """Smallest fraction of its bounding box that any unit actually sees (1 = no holes)."""
    fr = [Fraction(w.count, w.size) for w in axis.windows if not w.empty]
    return min(fr) if fr else Fraction(0)


def holes(axis: Axis, phase: int = 0) -> list[int]:
    """Offsets (from the window start) inside unit ``phase``'s bounding box that it does not see."""
    w = axis.windows[phase]
    return [b for b in range(w.size) if not (w.mask >> b) & 1]


def covers(axis: Axis, n: int, extent: int) -> bool:
    """Whether units ``0..n-1`` together see every pixel ``0..extent-1``: what an op that mixes all
    ``n`` of them (a mean, attention, a norm over the axis) must satisfy to be ``global``.

    >>> covers(conv(IDENTITY, k=2, s=2, p=0), 4, 8), covers(conv(IDENTITY, k=2, s=2, p=0), 3, 8)
    (True, False)
    >>> covers(conv(IDENTITY, k=1, s=2, p=0), 4, 8)  # every second pixel: holes
    False
    """
    full = (1 << extent) - 1
    seen = 0
    for i in range(n):  # no Window objects: this runs for every op that makes an axis global
        m, ph = divmod(i, axis.period)
        w = axis.windows[ph]
        if not w.mask:
            continue
        lo = w.lo + m * axis.step
        seen |= (w.mask << lo) if lo >= 0 else (w.mask >> -lo)
        if seen & full == full:
            return True
    return seen & full == full
