"""Gradient probes: exact validation of the static RF and the effective receptive field.

- :func:`validate` runs a linearised float64 copy of the analysed graph and checks
  every probed unit's gradient support against the static windows (README, "Gradient probe").
- :func:`erf` measures the effective receptive field of one node or several (shared forward passes)
  of the model as given
  (Luo et al. 2016) with RepLKNet's area-ratio metrics and
  one size estimator (σ, ERF extent, ERF/RF; :mod:`rfscope.probe.metrics`).

Names load on first use (PEP 562, as in :mod:`rfscope`): the ``rfscope`` command line imports
:mod:`rfscope.probe.command` without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rfscope._lazy import lazy_names

if TYPE_CHECKING:
    from rfscope.probe.effective import REDUCTIONS, ERFResult, NonFiniteError, erf, plot_grid, save_results
    from rfscope.probe.exact import AxisMeasure, NodeCheck, Validation, validate
    from rfscope.probe.graph import ProbeError
    from rfscope.probe.inputs import load_images, load_tensors
    from rfscope.probe.metrics import (
        THRESHOLDS,
        area_ratio,
        area_ratios,
        erf_extent,
        gaussian_sigma,
        replknet_transform,
        support,
    )
    from rfscope.probe.plot import FigureOptions

_FROM = {
    "effective": ("REDUCTIONS", "ERFResult", "NonFiniteError", "erf", "plot_grid", "save_results"),
    "exact": ("AxisMeasure", "NodeCheck", "Validation", "validate"),
    "graph": ("ProbeError",),
    "plot": ("FigureOptions",),
    "inputs": ("load_images", "load_tensors"),
    "metrics": ("THRESHOLDS", "area_ratio", "area_ratios", "erf_extent", "gaussian_sigma", "replknet_transform",
                "support"),
}

__all__ = [
    "validate", "Validation", "NodeCheck", "AxisMeasure", "ProbeError",
    "erf", "ERFResult", "REDUCTIONS", "NonFiniteError", "plot_grid", "save_results", "FigureOptions",
    "area_ratio", "area_ratios", "gaussian_sigma", "erf_extent", "support", "replknet_transform", "THRESHOLDS",
    "load_images", "load_tensors",
]

__getattr__, __dir__ = lazy_names(__name__, _FROM, globals(), __all__)
