"""Upsampling: ``nn.Upsample``/``F.interpolate`` (nearest, linear family, bicubic), PixelShuffle.

Index maps follow PyTorch's kernels; the float arithmetic of the kernel is
reproduced for the real output length and checked to be periodic, otherwise
the result is ``unknown`` rather than a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import local
from rfscope.core.positions import as_table, index_rule, table_rule
from rfscope.core.registry import Registry
from rfscope.core.state import TensorRF
from rfscope.plugins.pool import adaptive


def _scale(n_in: int, n_out: int, scale_factor: float | None, align_corners: bool, recompute: bool | None) -> float:
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    if scale_factor is not None and not recompute:
        return 1.0 / scale_factor
    return n_in / n_out


def _taps(mode: str, n_in: int, n_out: int, scale: float, align_corners: bool) -> list[tuple[list[int], bool]]:
    """Input indices each output index reads (exactly-zero weights dropped), in float32 as
    PyTorch's kernels compute them, and whether the borders clamped them."""
    o = np.arange(n_out, dtype=np.float32)
    sc = np.float32(scale)
    out: list[tuple[list[int], bool]] = []

    def inside(ts: list[int]) -> bool:
        return all(0 <= t <= n_in - 1 for t in ts)

    if mode in ("nearest", "nearest-exact"):
        src = np.floor((o + np.float32(0.5)) * sc if mode == "nearest-exact" else o * sc).astype(np.int64)
        return [([min(int(v), n_in - 1)], not inside([int(v)])) for v in src]
    if align_corners:
        real = o * sc
    else:
        real = sc * (o + np.float32(0.5)) - np.float32(0.5)
    if mode in ("linear", "bilinear", "trilinear"):
        for r in real:
            clamped = not align_corners and float(r) < 0
            if clamped:
                r = np.float32(0)
            i0 = int(np.floor(r))
            lam = float(r - np.float32(i0))
            raw = [i0, i0 + 1] if lam != 0.0 else [i0]
            taps = [min(i0, n_in - 1)]
            if lam != 0.0 and i0 + 1 <= n_in - 1:
                taps.append(i0 + 1)
            out.append((sorted(set(taps)), clamped or not inside(raw)))
        return out
    if mode == "bicubic":
        for r in real:
            i0 = int(np.floor(r))
            t = float(r - np.float32(i0))
            cand = [i0] if t == 0.0 else [i0 - 1, i0, i0 + 1, i0 + 2]
            out.append((sorted({min(max(c, 0), n_in - 1) for c in cand}), not inside(cand)))
        return out
    raise Unsupported(f"interpolation mode {mode!r}")


def _ratio(n_in: int, n_out: int, scale_factor: float | None, align_corners: bool,
           recompute: bool | None) -> Fraction:
    """Input units per output unit (the stride of the index map), as PyTorch's kernel uses it.

    With ``align_corners`` it is ``(n_in-1)/(n_out-1)``, with a given scale factor
    ``1/scale_factor`` (not ``n_in/n_out``: the output length is floored).
    """
    if align_corners:
        return Fraction(n_in - 1, n_out - 1) if n_out > 1 and n_in > 1 else Fraction(n_in, n_out)
    if scale_factor is not None and not recompute:
        return 1 / Fraction(scale_factor).limit_denominator(1000)
    return Fraction(n_in, n_out)


def interp_axis(a: rf.Axis, taps: list[tuple[list[int], bool]], n_in: int, ratio: Fraction | None = None) -> rf.Axis:
    """Fit a periodic map to explicit per-output taps and apply it; raise if not periodic.

    ``taps[o]`` is ``(input indices, clamped by a border)``; ``ratio`` is the map's stride
    in input units (default ``n_in/n_out``).  Each phase's pattern comes from outputs the
    borders did not clamp, and *every* such output must agree with it: float32 rounding
    of the scale can break the periodicity, and then the answer is ``unknown``.  Clamped
    border outputs follow the infinite-lattice convention (the periodic extension).
    """
    n_out = len(taps)
    r = ratio if ratio is not None else Fraction(n_in, n_out)
    base_p, base_s = r.denominator, r.numerator
    if base_p > rf.MAX_PERIOD:
        raise Unsupported("scale too irregular to be periodic")
    pattern: dict[int, list[int]] = {}
    for o, (ts, clamped) in enumerate(taps):
        if clamped:
            continue
        m, ph = divmod(o, base_p)
        rel = [t - m * base_s for t in ts]
        if pattern.setdefault(ph, rel) != rel:
            raise Unsupported("float rounding of the scale makes the index map non-periodic")
    if len(pattern) < base_p:
        raise Unsupported(f"the index map's period ({base_p} outputs) is not seen away from the borders")

    def deps(i: int) -> list[int]:
        m, ph = divmod(i, base_p)
        return [t + m * base_s for t in pattern[ph]]

    return rf.resample(a, deps, base_p, base_s)


def _interp_params(ctx: OpContext) -> tuple[str, Any, bool, bool | None]:
    m: Any = ctx.module
    if m is not None:
        mode = m.mode
        sf = m.scale_factor
        ac = bool(m.align_corners) if m.align_corners is not None else False
        rec = getattr(m, "recompute_scale_factor", None)
    else:
        mode = ctx.param("mode", "nearest")
        sf = ctx.param("scale_factor", None)
        ac_v = ctx.param("align_corners", None)
        ac = bool(ac_v) if ac_v is not None else False
        rec = ctx.param("recompute_scale_factor", None)
    return mode, sf, ac, rec


def _area(n_in: int, n_out: int) -> Callable[[rf.Axis], rf.Axis]:
    return lambda a: adaptive(a, n_in, n_out)


def _interp_rf(ctx: OpContext) -> TensorRF:
    mode, sf, ac, rec = _interp_params(ctx)
    x, out = ctx.in_shape(0), ctx.out_shape
    n = len(x) - 2
    if mode == "area":  # PyTorch computes it as adaptive average pooling
        return local(ctx, {2 + i: _area(x[2 + i], out[2 + i]) for i in range(n)})
    fns = {}
    for i in range(n):
        d = 2 + i
        s_i = None
        if sf is not None:
            s_i = float(sf[i] if isinstance(sf, (tuple, list)) else sf)
        scale = _scale(x[d], out[d], s_i, ac, rec)
        taps = _taps(mode, x[d], out[d], scale, ac)
        ratio = _ratio(x[d], out[d], s_i, ac, rec)
        fns[d] = (lambda a, taps=taps, ni=x[d], ratio=ratio: interp_axis(a, taps, ni, ratio))
    return local(ctx, fns)


def _interp_macs(ctx: OpContext) -> int:
    mode, *_ = _interp_params(ctx)
    per = {"nearest": 0, "nearest-exact": 0, "linear": 2, "bilinear": 4, "trilinear": 8, "bicubic": 16}
    return math.prod(ctx.out_shape) * per.get(mode, 0)


def _shuffle_rf(ctx: OpContext) -> TensorRF:
    m: Any = ctx.module
    r = int(m.upscale_factor) if ctx.module is not None else int(ctx.param("upscale_factor"))
    return local(ctx, {-1: lambda a: rf.resample(a, lambda i: [i // r], r, 1),
                       -2: lambda a: rf.resample(a, lambda i: [i // r], r, 1)})


def _unshuffle_rf(ctx: OpContext) -> TensorRF:
    m: Any = ctx.module
    r = int(m.downscale_factor) if ctx.module is not None else int(ctx.param("downscale_factor"))
    return local(ctx, {-1: lambda a: rf.conv(a, r, r), -2: lambda a: rf.conv(a, r, r)})


def _interp_table(ctx: OpContext) -> Any:
    """Nearest-neighbour resizing only copies values: run it on the table; the linear family and
    bicubic blend the input indices :func:`_taps` finds (each axis alone: the kernels are separable)."""
    mode, *_ = _interp_params(ctx)
    if mode in ("nearest", "nearest-exact"):
        return index_rule(ctx)
    if mode not in ("linear", "bilinear", "trilinear", "bicubic"):
        raise Unsupported(f"{mode} interpolation in a token layout")
    if ctx.module is None and ctx.param("antialias", False):  # nn.Upsample has no antialias
        raise Unsupported("antialiased interpolation in a token layout")
    return _blend_table(ctx)


@table_rule(mixing=False)
def _blend_table(ctx: OpContext) -> Any:
    mode, sf, ac, rec = _interp_params(ctx)
    t = as_table(ctx, ctx.state(0, "input"), ctx.arg(0, "input"))
    x, out = ctx.in_shape(0), ctx.out_shape
    t = t.narrowed_where_constant(range(2))
    for i in range(len(x) - 2):
        d = 2 + i
        s_i = None if sf is None else float(sf[i] if isinstance(sf, (tuple, list)) else sf)
        taps = _taps(mode, x[d], out[d], _scale(x[d], out[d], s_i, ac, rec), ac)
        t = t.pick(d, [ts for ts, _ in taps])
    return t.union(shape=out)


def register(reg: Registry) -> None:
    reg.add("interpolate", (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
                            F.interpolate, F.upsample),
            rf=_interp_rf, macs=_interp_macs, table=_interp_table)
    reg.add("pixel_shuffle", (nn.PixelShuffle, F.pixel_shuffle), rf=_shuffle_rf, table=index_rule)
    reg.add("pixel_unshuffle", (nn.PixelUnshuffle, F.pixel_unshuffle), rf=_unshuffle_rf, table=index_rule)
