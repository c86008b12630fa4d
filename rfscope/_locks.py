"""The one process-wide lock that serialises rfscope's tracing and plugin loading.

While it traces, ``torch.fx``'s symbolic tracer patches ``torch.nn.Module.__call__`` and
``__getattr__`` and module globals for the whole process (``torch.fx._symbolic_trace.CURRENT_PATCHER``),
and ``torch.export`` and ``make_fx`` keep process-wide tracer state (the exported module hierarchy,
``torch.fx.traceback.current_meta``).  Two traces at once corrupt each other: nodes land in the
other thread's graph, or a trace fails and the analysis silently takes another path.  So every
trace (:func:`rfscope.trace.trace`, :func:`rfscope.fallback.trace_export`,
:func:`rfscope.fallback.trace_make_fx`), the log and stderr silencing around the fallback tracers,
and the loading of a registry's plugins hold :data:`TRACE_LOCK`.  Plugin loading shares it because
a plugin that looks up a library function while another thread traces would register fx's patched
stand-in instead of the function.

The lock is reentrant: ``trace_model`` nests the tracers, and tracing loads plugins.  Shape
propagation, the plugins and counting run outside it, concurrently.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["TRACE_LOCK", "serialised"]

#: held by every trace and by plugin loading (see the module docstring)
TRACE_LOCK = threading.RLock()

_P = ParamSpec("_P")
_R = TypeVar("_R")


def serialised(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` run while holding :data:`TRACE_LOCK` (for the tracers)."""

    @functools.wraps(fn)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with TRACE_LOCK:
            return fn(*args, **kwargs)

    return locked
