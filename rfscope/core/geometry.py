"""The geometry of a sliding-window op (convolution or pooling), read once by its plugin.

Counting (convolution anatomy, depthwise-separable blocks), the design diagnostics
(gridding, checkerboard) and the initialisation check all need the same facts about a
convolution or a pooling call.  The op's plugin reads them once from the module or the
call's arguments and returns a :class:`Geometry`; nothing else parses those arguments.

>>> g = Geometry("conv", kernel=(3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2),
...              groups=32, weight_shape=(32, 1, 3, 3))
>>> g.conv_kind()
['depthwise', 'dilated']
>>> Geometry("conv", (3,), (2,), (0,), (1,), transposed=True, weight_shape=(8, 4, 3)).taps()
((2, 1),)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Geometry", "transposed_taps"]


def transposed_taps(k: int, s: int, p: int = 0, d: int = 1) -> tuple[int, ...]:
    """Number of kernel taps that reach each output phase of a 1-D transposed conv.

    Output ``o`` receives tap ``t`` from input ``(o + p - t*d) / s`` when that is an integer;
    unequal counts are uneven overlap, the cause of checkerboard artefacts.

    >>> transposed_taps(3, 2), transposed_taps(4, 2), transposed_taps(2, 2)
    ((2, 1), (2, 2), (1, 1))
    """
    return tuple(sum(1 for t in range(k) if (o + p - t * d) % s == 0) for o in range(s))


@dataclass(frozen=True)
class Geometry:
    """Kernel, stride, left padding and dilation per spatial dim, for a conv or a pool.

    ``kind`` is ``"conv"`` (a learned kernel; ``groups``, ``weight_shape`` and ``transposed``
    apply) or ``"pool"`` (a fixed window; ``pool`` says ``"max"``, ``"avg"`` or ``"lp"``).
    ``padding`` is the padding before the first position (PyTorch's ``'same'`` puts an odd
    extra pixel after the last one).
    """

    kind: Literal["conv", "pool"]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    weight_shape: tuple[int, ...] | None = None
    pool: Literal["max", "avg", "lp"] | None = None

    @property
    def n(self) -> int:
        """Number of spatial dims."""
        return len(self.kernel)

    @property
    def in_channels(self) -> int | None:
        if self.weight_shape is None:
            return None
        return self.weight_shape[0] if self.transposed else self.weight_shape[1] * self.groups

    @property
    def dilated(self) -> bool:
        """Some dim with a kernel wider than 1 has dilation > 1 (so its units may see holes)."""
        return any(d > 1 and k > 1 for d, k in zip(self.dilation, self.kernel, strict=True))

    def conv_kind(self) -> list[str] | None:
        """Primary kind, then flags (``["depthwise", "dilated"]``); ``None`` for a pool.

        Primary: ``depthwise`` (``groups == C_in > 1``), ``grouped`` (``1 < groups != C_in``),
        ``pointwise`` (``groups == 1``, every kernel size 1), ``standard`` (``groups == 1``,
        some kernel size > 1).  Flags: ``pointwise`` (after ``depthwise``/``grouped`` with a
        1x1 kernel), ``dilated``, ``transposed``.
        """
        if self.kind != "conv":
            return None
        one = all(k == 1 for k in self.kernel)
        if self.groups > 1 and self.groups == self.in_channels:
            kind = ["depthwise"]
        elif self.groups > 1:
            kind = ["grouped"]
        else:
            kind = ["pointwise" if one else "standard"]
        if self.groups > 1 and one:
            kind.append("pointwise")
        if self.dilated:
            kind.append("dilated")
        if self.transposed:
            kind.append("transposed")
        return kind

    def taps(self) -> tuple[tuple[int, ...], ...]:
        """For a transposed conv, per dim, the taps reaching each output phase."""
        return tuple(transposed_taps(k, s, p, d)
                     for k, s, p, d in zip(self.kernel, self.stride, self.padding, self.dilation, strict=True))
