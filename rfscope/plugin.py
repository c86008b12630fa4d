"""Everything a plugin author needs, in one import.

A plugin teaches rfscope one family of operations: a function from an :class:`OpContext` to the
output's :class:`TensorRF` (``rf``), optionally its multiply-accumulates (``macs``) and, for a
sliding-window op, its :class:`Geometry` (which gives counting, convolution anatomy and the
gridding/checkerboard diagnostics for free).  Register it for the real fx target: a module
class, a function object, or ``Method("name")`` for a tensor method.  See ``docs/design.md``
("Adding an operation") and ``examples/plugin_deformable.py``.

>>> import torch.nn as nn
>>> from rfscope.plugin import Plugin, Registry, local, rf
>>> class Blur(nn.Module):
...     def forward(self, x):
...         return x
>>> reg = Registry()
>>> _ = reg.register(Plugin("blur", (Blur,), rf=lambda ctx: local(ctx, {-1: lambda a: rf.conv(a, 3, p=1)})))
>>> reg.lookup_module(Blur()).name
'blur'
"""

from rfscope.core import rf, traits
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.geometry import Geometry, transposed_taps
from rfscope.core.initview import InitContext, WeightView
from rfscope.core.ops import axes_of, elementwise, global_over, local, norm_dim, reduce_dims, same_state
from rfscope.core.registry import Method, Plugin, PluginError, Registry, default_registry
from rfscope.core.shape_rules import register_function_rule
from rfscope.core.state import CONST, Global, Merged, TensorRF, make_global, map_axis, merge, unknown

__all__ = [
    "rf", "OpContext", "Unsupported", "Geometry", "transposed_taps",
    "axes_of", "elementwise", "global_over", "local", "norm_dim", "reduce_dims", "same_state",
    "Method", "Plugin", "PluginError", "Registry", "default_registry",
    "CONST", "Global", "Merged", "TensorRF", "make_global", "map_axis", "merge", "unknown",
    "register_function_rule", "InitContext", "WeightView", "traits",
]
