"""Numbers computed from an ERF map (any number of spatial dims).

- :func:`area_ratios`: RepLKNet's high-contribution area ratio (Ding et al., CVPR 2022):
  ``log10(x + 1)``, divide by the max, grow centred odd cubes (side 3, 5, …) until
  the covered fraction of the total is *strictly* above ``t``, report
  ``side**d / numel`` (capped at 1; cubes are clipped to the map when summing).
- The ERF size, one estimator: :func:`gaussian_sigma` is the per-axis standard
  deviation of the map taken as a distribution (second moment of the marginal about
  its centroid); :func:`erf_extent` is ``4σ`` (the ±2σ box) clipped to the
  marginal's :func:`support` (first to last non-zero position), so the extent never
  exceeds the pixels the gradient reaches.  The ERF/RF ratio the probe reports is
  this extent over the static RF size.

Every function raises ``ValueError`` on a map with NaN or infinite values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["THRESHOLDS", "replknet_transform", "area_ratio", "area_ratios", "gaussian_sigma", "support",
           "erf_extent"]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def replknet_transform(m: np.ndarray) -> np.ndarray:
    """``log10(m + 1)`` divided by its max (all zeros stays all zeros)."""
    t = np.log10(_finite(m) + 1.0)
    mx = float(t.max()) if t.size else 0.0
    return t / mx if mx > 0 else t


def area_ratio(m: np.ndarray, t: float, center: Sequence[int]) -> tuple[int, float] | None:
    """``(side, side**d / m.size)`` of the smallest centred odd cube holding more than ``t`` of ``m``.

    ``m`` is used as given (apply :func:`replknet_transform` first for RepLKNet's
    metric).  ``None`` when the map sums to zero.
    """
    m = _finite(m)
    total = float(m.sum())
    if total <= 0:
        return None
    c = [int(x) for x in center]
    far = max(max(ci, n - 1 - ci) for ci, n in zip(c, m.shape, strict=True))
    for r in range(1, far + 1):
        sl = tuple(slice(max(0, ci - r), min(n, ci + r + 1)) for ci, n in zip(c, m.shape, strict=True))
        if float(m[sl].sum()) / total > t:
            side = 2 * r + 1
            return side, min(1.0, side ** m.ndim / m.size)
    side = 2 * far + 1
    return side, 1.0


def area_ratios(
    m: np.ndarray, center: Sequence[int], thresholds: Sequence[float] = THRESHOLDS, transform: bool = True
) -> dict[str, dict[str, float | int] | None]:
    """RepLKNet area ratios keyed ``"20%"``, ``"30%"``, ``"50%"``, ``"99%"`` (``{"side", "ratio"}``)."""
    mm = replknet_transform(m) if transform else _finite(m)
    out: dict[str, dict[str, float | int] | None] = {}
    for t in thresholds:
        r = area_ratio(mm, t, center)
        out[f"{round(t * 100)}%"] = None if r is None else {"side": r[0], "ratio": r[1]}
    return out


def _finite(m: np.ndarray) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"the ERF map has {bad} NaN or infinite value(s) of {a.size}; no metric is defined")
    return a


def _marginal(m: np.ndarray, axis: int) -> np.ndarray:
    return m.sum(axis=tuple(i for i in range(m.ndim) if i != axis))


def gaussian_sigma(m: np.ndarray) -> tuple[float, ...]:
    """Per-axis standard deviation (pixels) of ``m / m.sum()`` about its centroid; NaN for an all-zero map.

    For ``n`` stacked all-ones ``k``-tap linear convolutions the map is the outer
    product of the coefficients of ``(1 + z + … + z^(k-1))^n``, whose variance per
    axis is ``n (k² - 1) / 12`` exactly.
    """
    m = _finite(m)
    total = float(m.sum())
    if total <= 0:
        return tuple(float("nan") for _ in m.shape)
    out = []
    for a in range(m.ndim):
        p = _marginal(m, a) / total
        x = np.arange(m.shape[a], dtype=np.float64)
        mu = float((p * x).sum())
        out.append(float(np.sqrt(max(0.0, float((p * (x - mu) ** 2).sum())))))
    return tuple(out)


def support(m: np.ndarray) -> tuple[int, ...]:
    """Per axis, the number of positions from the first to the last non-zero entry of the marginal (0 if none)."""
    m = _finite(m)
    out = []
    for a in range(m.ndim):
        nz = np.flatnonzero(_marginal(np.abs(m), a))
        out.append(int(nz[-1] - nz[0] + 1) if nz.size else 0)
    return tuple(out)


def erf_extent(m: np.ndarray) -> tuple[float, ...]:
    """Per-axis ERF extent in pixels: ``min(4σ, support)`` (σ from :func:`gaussian_sigma`); NaN if all zero.

    ``4σ`` is the width of the ±2σ box about the centroid (95 % of a Gaussian);
    clipping to the support keeps a flat or two-peaked map (whose ``4σ`` can exceed
    its width: ``4·sqrt((k²-1)/12) > k`` for a uniform ``k``-wide map, ``k ≥ 2``) from
    reporting an ERF wider than the pixels its gradient reaches.
    """
    return tuple(min(4.0 * s, float(n)) if np.isfinite(s) else float("nan")
                 for s, n in zip(gaussian_sigma(m), support(m), strict=True))
