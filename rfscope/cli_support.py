"""What every rfscope command shares, one layer below the commands themselves.

The ``rfscope`` group (:mod:`rfscope.cli`) and the ``rfscope probe`` command
(:mod:`rfscope.probe.command`, also run alone as ``python -m rfscope.probe``) both use:

- :class:`CliError`: a one-line user error, exit status 2;
- :class:`Interrupted` with :class:`InterruptibleGroup` / :class:`InterruptibleCommand`: a
  Ctrl-C anywhere in a command is ``rfscope: interrupted``, exit status 130;
- :func:`handle_errors`: known exceptions become one-line errors unless ``--debug``, and
  rfscope's own warnings print as ``rfscope: note:`` lines;
- :func:`parse_shape`: ``--input-shape 3,224,224``.

It imports no command, so a command can import it without a circle.  It must not import torch
at module level: ``rfscope --help`` starts without torch, and a Ctrl-C while torch loads is
still one line.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

__all__ = [
    "CliError", "Interrupted", "InterruptibleGroup", "InterruptibleCommand", "CONTEXT_SETTINGS",
    "handle_errors", "parse_shape",
]

F = TypeVar("F", bound=Callable[..., Any])

#: click settings of every rfscope command: ``-h`` is ``--help``
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

#: the largest tensor size torch can index (int64 element counts)
_MAX_NUMEL = 2**63 - 1


class CliError(click.ClickException):
    """A one-line user error; exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"rfscope: error: {self.format_message()}", err=True)


class Interrupted(click.ClickException):
    """Ctrl-C: one line, exit status 130 (128 + SIGINT), no traceback."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: Any = None) -> None:
        click.echo("rfscope: interrupted", err=True)


#: set once this CLI process received Ctrl-C.  A Ctrl-C that lands inside a C extension's import
#: (numpy, torch) can surface later as an unrelated error ("cannot load module more than once per
#: process") instead of KeyboardInterrupt; the error handler then still says "interrupted".  CLI
#: process state only (the library never reads it).
SIGINT_SEEN = threading.Event()


def _watch_sigint() -> None:
    """Note Ctrl-C before raising KeyboardInterrupt as usual; an inherited choice (SIGINT ignored
    under ``nohup``, or a handler of the caller's) is left alone."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def note(signum: int, frame: Any) -> None:
        SIGINT_SEEN.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)


class InterruptibleGroup(click.Group):
    """A group in which a Ctrl-C anywhere in a command (importing torch, building the model,
    tracing, probing) is :class:`Interrupted`."""

    def invoke(self, ctx: click.Context) -> Any:
        _watch_sigint()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


class InterruptibleCommand(click.Command):
    """A command that is :class:`Interrupted` by a Ctrl-C, also when run on its own (not in a group)."""

    def invoke(self, ctx: click.Context) -> Any:
        _watch_sigint()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (no batch dim) -> ``(1, 3, 224, 224)``.

    Raises
    ------
    CliError
        Not a list of positive ints, no size at all, or too large for a tensor.

    Examples
    --------
    >>> parse_shape("3,224,224")
    (1, 3, 224, 224)
    >>> parse_shape("3x32")
    (1, 3, 32)
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError as e:
        raise CliError(f"--input-shape {text!r} is not a comma-separated list of ints, e.g. 3,224,224") from e
    if not dims:
        raise CliError(f"--input-shape {text!r} needs at least one size, e.g. 3,224,224")
    if any(d <= 0 for d in dims):
        raise CliError(f"--input-shape {text!r} has a zero or negative size")
    numel = 1
    for d in dims:
        numel *= d
    if numel > _MAX_NUMEL // 8:  # bytes of a float64 copy must fit in int64 too
        raise CliError(f"--input-shape {text!r} is too large: {numel:.3g} elements do not fit in a tensor "
                       "(at most 2**60); give the real input size")
    return (1, *dims)


def _show_note(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: Any = None, line: str | None = None) -> None:
    """One ``rfscope: note:`` line on stderr for rfscope's own notes (which checkpoint entry was loaded)."""
    if category.__module__.startswith("rfscope"):
        click.echo(f"rfscope: note: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _user_error(e: BaseException) -> str | None:
    """torch errors that bad input causes, as a one-line message (``None``: not one of them)."""
    msg = str(e)
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    if isinstance(e, RuntimeError) and ("does not require grad" in msg or "not have been used in the graph" in msg):
        return ("no gradient reaches the input from the probed node: its output does not depend on the input "
                "through differentiable ops (a constant, detach(), argmax ...); probe a node that does (--node)")
    if isinstance(e, (RuntimeError, OverflowError)) and "overflow" in msg.lower():
        return f"a tensor size overflowed ({first}); the input is too large: give a smaller --input-shape"
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in msg
                                                                        or "out of memory" in msg.lower())):
        return (f"out of memory ({first}); use a smaller --input-shape, --batch-size or --samples, "
                "or another --device")
    return None


def handle_errors(fn: F) -> F:
    """Turn known exceptions into one-line errors (exit 2) unless ``--debug``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_note
                return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if SIGINT_SEEN.is_set():  # what a Ctrl-C inside an import left behind
                raise Interrupted() from None
            if debug:
                raise
            known = _user_error(e)
            msg = known or (str(e).splitlines()[0] if str(e) else type(e).__name__)
            from rfscope.core.errors import RfscopeError

            # every error rfscope raises for bad input derives from RfscopeError; OSError and
            # ValueError come from the user's files and the user's own model code
            if not isinstance(e, (RfscopeError, OSError, ValueError)) and known is None:
                msg = f"internal error ({type(e).__name__}: {msg}); rerun with --debug and report it"
            raise CliError(msg) from e

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def slow_notice(what: str, after: float = 1.0, quiet: bool = False) -> Iterator[None]:
    """Say on stderr that ``what`` is under way if it takes longer than ``after`` seconds, and how
    long it took when it ends, so a slow step (importing torch, building a large model, reading a
    checkpoint) is never silent.  Nothing is printed for a fast step or with ``quiet``.

    >>> with slow_notice("building the model", quiet=True):
    ...     pass
    """
    if quiet:
        yield
        return
    done = threading.Event()
    said: list[float] = []
    start = time.monotonic()

    def notice() -> None:
        if not done.wait(after):
            said.append(time.monotonic())
            click.echo(f"rfscope: {what}...", err=True)

    t = threading.Thread(target=notice, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        if said:
            click.echo(f"rfscope: {what}: done in {time.monotonic() - start:.1f} s", err=True)
