"""The one process-wide lock that serialises rfscope's tracing and plugin loading.

While it traces, ``torch.fx``'s symbolic tracer patches ``torch.nn.Module.__call__`` and
``__getattr__`` and module globals for the whole process (``torch.fx._symbolic_trace.CURRENT_PATCHER``),
and ``torch.export`` and ``make_fx`` keep process-wide tracer state (the exported module hierarchy,
``torch.fx.traceback.current_meta``).  Two traces at once corrupt each other: nodes land in the
other thread's graph, or a trace fails and the analysis silently takes another path.  So every
trace (:func:`rfscope.trace.symbolic.trace`, :func:`rfscope.trace.aten.trace_export`,
:func:`rfscope.trace.aten.trace_make_fx`), the log and stderr silencing around the fallback tracers,
and the loading of a registry's plugins hold :data:`TRACE_LOCK`.  Plugin loading shares it because
a plugin that looks up a library function while another thread traces would register fx's patched
stand-in instead of the function.

The lock is reentrant: ``trace_model`` nests the tracers, and tracing loads plugins.  Shape
propagation, the plugins and counting run outside it, concurrently.

A symbolic trace hands other threads' module calls straight back (``RFTracer``), but torch's own
tracers do not: while ``torch.export`` traces a model that registers a submodule under two names,
its tracer answers every thread's submodule lookups with its proxies and records their calls in
its module stack, which breaks both sides.  So :data:`RUN_GATE` lets code that runs a model's
modules (shape propagation, the init check's forward pass, the cross-check of a traced graph)
run together, but never while ``torch.export`` or ``make_fx`` traces (:func:`exclusive`).
Code inside :meth:`_Gate.running` never takes :data:`TRACE_LOCK` (a tracer waiting for the gate
holds it).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["TRACE_LOCK", "RUN_GATE", "serialised", "exclusive", "running"]

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


class _Gate:
    """Any number of threads running modules at once, or one tracer alone (its own thread may run too).

    Both sides are reentrant per thread.  A tracer waits until no other thread is running; a
    thread that wants to run waits while another thread traces.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._runners: dict[int, int] = {}  # thread -> nesting depth
        self._owner: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            while self._owner is not None and self._owner != me:
                self._cond.wait()
            self._runners[me] = self._runners.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                if self._runners[me] == 1:
                    del self._runners[me]
                    self._cond.notify_all()
                else:
                    self._runners[me] -= 1

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            while (self._owner is not None and self._owner != me) or any(t != me for t in self._runners):
                self._cond.wait()
            self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._cond.notify_all()


#: shared by code that runs modules, taken alone by torch.export and make_fx (module docstring)
RUN_GATE = _Gate()


def running() -> contextlib.AbstractContextManager[None]:
    """Context for code that runs a model's modules outside a trace (see :data:`RUN_GATE`)."""
    return RUN_GATE.running()


def exclusive(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` run holding :data:`TRACE_LOCK` with no other thread running modules (torch.export, make_fx)."""

    @functools.wraps(fn)
    def alone(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with TRACE_LOCK, RUN_GATE.alone():
            return fn(*args, **kwargs)

    return alone
