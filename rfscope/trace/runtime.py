"""Running the user's code safely: the global RNG left where it was, deep models on a big stack."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from rfscope.trace.copy import tree_depth

_F = TypeVar("_F", bound=Callable[..., Any])


_R = TypeVar("_R")


_RNG_LOCK = threading.Lock()


_rng_saved: list[Any] = []  # [cpu state, cuda states or None] while any keep_rng_state is active


_rng_depth = 0  # how many keep_rng_state blocks are active, in any thread


@contextlib.contextmanager
def keep_rng_state() -> Iterator[None]:
    """Restore the global random generators (CPU, and every initialised CUDA device) on exit.

    Wraps the places where the model's own code runs on real tensors (make_fx tracing, the
    init check's forward pass, the probes): a forward that draws from the global generator
    (``torch.randn_like`` noise, dropout) must not move the user's random stream.  rfscope's
    own random inputs come from private ``torch.Generator`` objects.  Blocks that overlap in
    several threads are counted under a lock: the state is saved when the first one starts and
    restored when the last one ends, so overlapping analyses cannot leave it moved.  Draws
    made by other threads while a block is active are rewound with it.
    """
    global _rng_depth
    with _RNG_LOCK:
        if _rng_depth == 0:
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
            _rng_saved[:] = [torch.random.get_rng_state(), cuda]
        _rng_depth += 1
    try:
        yield
    finally:
        with _RNG_LOCK:
            _rng_depth -= 1
            if _rng_depth == 0:
                cpu, cuda = _rng_saved
                torch.random.set_rng_state(cpu)
                if cuda is not None:
                    torch.cuda.set_rng_state_all(cuda)
                _rng_saved.clear()


def keeps_rng_state(fn: _F) -> _F:
    """Decorator form of :func:`keep_rng_state`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with keep_rng_state():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


#: module nesting up to which the caller's stack and recursion limit suffice (fx tracing takes
#: about six Python frames per level; the default limit is 1000)
SHALLOW = 60


_DEEP_LOCK = threading.Lock()


_deep_users = 0


_saved_limit = 0


def deep_tree(model: torch.nn.Module) -> int:
    """``model``'s nesting depth if it needs :func:`call_deep` (deeper than :data:`SHALLOW`, and not
    already in a deep worker), else 0."""
    if threading.current_thread().name.startswith("rfscope-deep"):
        return 0
    depth = tree_depth(model)
    return depth if depth > SHALLOW else 0


def call_deep(depth: int, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``fn(*args, **kwargs)``, in a worker thread with a stack and recursion limit for ``depth``
    nested modules when ``depth`` exceeds :data:`SHALLOW` (tracing, copying and walking a module
    tree recurse once or more per level).

    The recursion limit is process-wide: it is raised while any such call runs and restored
    when the last one ends (counted under a lock, so concurrent calls are safe).  Exceptions
    are re-raised in the caller.
    """
    if depth <= SHALLOW or threading.current_thread().name.startswith("rfscope-deep"):
        return fn(*args, **kwargs)  # shallow, or already in a deep worker
    global _deep_users, _saved_limit
    need = 1000 + 40 * depth
    stack = min(1 << 31, (64 << 20) + depth * (256 << 10))  # bytes; untouched pages cost nothing
    with _DEEP_LOCK:
        if _deep_users == 0:
            _saved_limit = sys.getrecursionlimit()
        _deep_users += 1
        if sys.getrecursionlimit() < need:
            sys.setrecursionlimit(need)
        old = threading.stack_size()
        try:
            threading.stack_size(stack)
            box: dict[str, Any] = {}

            def work() -> None:
                try:
                    box["out"] = fn(*args, **kwargs)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    box["err"] = e

            t = threading.Thread(target=work, name="rfscope-deep", daemon=True)
            t.start()
        finally:
            threading.stack_size(old)
    try:
        while t.is_alive():
            t.join(0.1)  # in short waits, so that Ctrl-C reaches the caller
    finally:
        with _DEEP_LOCK:
            _deep_users -= 1
            if _deep_users == 0:
                sys.setrecursionlimit(_saved_limit)
    if "err" in box:
        raise box["err"]
    return box["out"]  # type: ignore[no-any-return]


def deep_entry(fn: _F) -> _F:
    """Decorator for entry points whose first argument is the model: a deeply nested one runs
    through :func:`call_deep`."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        depth = deep_tree(model) if isinstance(model, torch.nn.Module) else 0
        if depth:
            return call_deep(depth, fn, model, *args, **kwargs)
        return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]

