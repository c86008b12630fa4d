"""From a model to a graph with shapes: copies, the three tracers and the meta shape pass.

:func:`trace_model` picks the tracer (:mod:`.strategy`); :func:`propagate_shapes` runs the graph on
meta tensors (:mod:`.shapes`).  The user's model is never touched (:mod:`.copy`, :mod:`.runtime`).
"""

from rfscope.core.errors import TraceError
from rfscope.core.shape_rules import register_function_rule
from rfscope.trace.copy import meta_copy, structural_copy
from rfscope.trace.shapes import explain_shape_error, propagate_shapes
from rfscope.trace.strategy import PATH_NAMES, TRACE_MODES, trace_model

__all__ = ["TraceError", "trace_model", "TRACE_MODES", "PATH_NAMES", "propagate_shapes", "explain_shape_error",
           "structural_copy", "meta_copy", "register_function_rule"]
