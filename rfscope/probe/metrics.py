"""Numbers computed from an ERF map (any number of spatial dims).

- :func:`area_ratios`: RepLKNet's high-contribution area ratio (Ding et al., CVPR 2022):
  ``log10(x + 1)``, divide by the max, grow centred odd cubes (side 3, 5, …) until
  the covered fraction of the total is *strictly* above ``t``, report
  ``side**d / numel`` (capped at 1; cubes are clipped to the map when summing).
- :func:`gaussian_fit_sigma`: per-axis σ of a Gaussian fitted to the core of the
  raw map's marginal (robust to the RF boundary truncating the tails);
  :func:`gaussian_sigma`: the moments (standard deviation of the map taken as a distribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["THRESHOLDS", "replknet_transform", "area_ratio", "area_ratios", "gaussian_sigma", "gaussian_fit_sigma"]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def replknet_transform(m: np.ndarray) -> np.ndarray:
    """``log10(m + 1)`` divided by its max (all zeros stays all zeros)."""
    t = np.log10(np.asarray(m, dtype=np.float64) + 1.0)
    mx = float(t.max()) if t.size else 0.0
    return t / mx if mx > 0 else t


def area_ratio(m: np.ndarray, t: float, center: Sequence[int]) -> tuple[int, float] | None:
    """``(side, side**d / m.size)`` of the smallest centred odd cube holding more than ``t`` of ``m``.

    ``m`` is used as given (apply :func:`replknet_transform` first for RepLKNet's
    metric).  ``None`` when the map sums to zero.
    """
    m = np.asarray(m, dtype=np.float64)
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
    mm = replknet_transform(m) if transform else np.asarray(m, dtype=np.float64)
    out: dict[str, dict[str, float | int] | None] = {}
    for t in thresholds:
        r = area_ratio(mm, t, center)
        out[f"{round(t * 100)}%"] = None if r is None else {"side": r[0], "ratio": r[1]}
    return out


def gaussian_sigma(m: np.ndarray) -> tuple[float, ...]:
    """Per-axis standard deviation (in pixels) of ``m / m.sum()``; NaN for an all-zero map."""
    m = np.asarray(m, dtype=np.float64)
    total = float(m.sum())
    if total <= 0:
        return tuple(float("nan") for _ in m.shape)
    out = []
    for a in range(m.ndim):
        p = m.sum(axis=tuple(i for i in range(m.ndim) if i != a)) / total
        x = np.arange(m.shape[a], dtype=np.float64)
        mu = float((p * x).sum())
        out.append(float(np.sqrt(max(0.0, float((p * (x - mu) ** 2).sum())))))
    return tuple(out)


def gaussian_fit_sigma(m: np.ndarray, floor: float = float(np.exp(-2.0))) -> tuple[float, ...]:
    """Per-axis σ of a Gaussian fitted to the core of the map's marginal.

    Least squares of ``log p = a + b x + c x²`` over the positions where the
    marginal ``p`` is at least ``floor`` times its peak (``e⁻²``: the central
    ±2σ of a Gaussian); ``σ = sqrt(-1 / 2c)``.  Unlike the moments this ignores
    the tails, which the RF boundary truncates.  NaN when fewer than 3 points
    qualify or the fit is not concave.
    """
    m = np.asarray(m, dtype=np.float64)
    out = []
    for a in range(m.ndim):
        p = m.sum(axis=tuple(i for i in range(m.ndim) if i != a))
        if p.size == 0 or float(p.max()) <= 0:
            out.append(float("nan"))
            continue
        keep = p >= floor * float(p.max())
        x = np.arange(p.size, dtype=np.float64)[keep]
        if x.size < 3:
            out.append(float("nan"))
            continue
        c2, _, _ = np.polyfit(x - x.mean(), np.log(p[keep]), 2)
        out.append(float(np.sqrt(-1.0 / (2.0 * c2))) if c2 < 0 else float("nan"))
    return tuple(out)
