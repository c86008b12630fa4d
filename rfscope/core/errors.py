"""Every error rfscope raises for a user's mistake derives from :class:`RfscopeError`."""

from __future__ import annotations

__all__ = ["RfscopeError", "TraceError"]


class RfscopeError(Exception):
    """Base of every error rfscope raises for bad input (a model, shape, file or option it cannot use).

    The command line catches this one class: its message is the one-line error shown to the user.
    """



class TraceError(RfscopeError, RuntimeError):
    """The model could not be traced or its shapes could not be propagated."""

    #: module path being traced when symbolic tracing failed (None when unknown)
    module: str | None = None

