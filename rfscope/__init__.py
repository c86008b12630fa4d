"""rfscope: what every layer of a PyTorch model can see, before training.

>>> import torch.nn as nn, rfscope
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3))
>>> r = rfscope.analyze(net, input_shape=(1, 3, 64, 64)).rf("2")
>>> r.size, r.stride
((7, 7), (Fraction(2, 1), Fraction(2, 1)))
"""

# Names load on first use (PEP 562): ``rfscope --help`` starts without importing torch, and the
# CLI turns a Ctrl-C while torch loads into one line (see rfscope.cli).
from __future__ import annotations

from typing import TYPE_CHECKING

from rfscope._lazy import lazy_names

if TYPE_CHECKING:
    from rfscope import design, export, probe
    from rfscope.core.context import OpContext, Unsupported
    from rfscope.core.initview import InitContext, WeightView
    from rfscope.core.registry import Method, Plugin, PluginError, Registry, default_registry
    from rfscope.core.result import RF, AxisInfo
    from rfscope.export import RendererNotFoundError
    from rfscope.passes.counts import ParamCount, SeparableBlock, Summary
    from rfscope.passes.diagnostics import DesignWarning
    from rfscope.passes.initcheck import Finding, InitCheckError
    from rfscope.pipeline import AnalysisInputError, analyze, check_init
    from rfscope.report import Report, UnknownNameError
    from rfscope.weights import WeightsError, load_weights

_FROM = {
    "pipeline": ("AnalysisInputError", "analyze", "check_init"),
    "core.context": ("OpContext", "Unsupported"),
    "core.errors": ("RfscopeError", "TraceError"),
    "passes.counts": ("ParamCount", "SeparableBlock", "Summary"),
    "passes.diagnostics": ("DesignWarning",),
    "export.dot": ("RendererNotFoundError",),
    "passes.initcheck": ("Finding", "InitCheckError"),
    "core.initview": ("InitContext", "WeightView"),
    "passes.interpret": ("StrictError",),
    "core.registry": ("Method", "Plugin", "PluginError", "Registry", "default_registry"),
    "report": ("Report", "UnknownNameError"),
    "core.result": ("RF", "AxisInfo"),
    "weights": ("WeightsError", "load_weights"),
}



__all__ = [
    "analyze",
    "Report",
    "RF",
    "AxisInfo",
    "Plugin",
    "Method",
    "Registry",
    "default_registry",
    "OpContext",
    "Unsupported",
    "PluginError",
    "AnalysisInputError",
    "UnknownNameError",
    "load_weights",
    "WeightsError",
    "design",
    "DesignWarning",
    "export",
    "RendererNotFoundError",
    "check_init",
    "Finding",
    "InitCheckError",
    "InitContext",
    "WeightView",
    "ParamCount",
    "Summary",
    "SeparableBlock",
    "probe",
    "plugin",
    "RfscopeError",
    "TraceError",
    "StrictError",
]
from rfscope._version import __version__ as __version__  # noqa: E402 - re-exported

__getattr__, __dir__ = lazy_names(__name__, _FROM, globals(), __all__)
