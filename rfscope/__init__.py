"""rfscope: what every layer of a PyTorch model can see, before training.

>>> import torch.nn as nn, rfscope
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3))
>>> r = rfscope.analyze(net, input_shape=(1, 3, 64, 64)).rf("2")
>>> r.size, r.stride
((7, 7), (Fraction(2, 1), Fraction(2, 1)))
"""

from . import design, export, probe
from .api import AnalysisInputError, analyze
from .context import OpContext, Unsupported
from .counting import ParamCount, SeparableBlock, Summary
from .diagnostics import DesignWarning
from .export import RendererNotFoundError
from .initcheck import Finding, InitCheckError, InitRule, WeightView, check_init
from .registry import Method, Plugin, PluginError, Registry, default_registry
from .report import Report, UnknownNameError
from .result import RF, AxisInfo
from .weights import WeightsError, load_weights

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
    "InitRule",
    "WeightView",
    "ParamCount",
    "Summary",
    "SeparableBlock",
    "probe",
]
__version__ = "0.1.0"
