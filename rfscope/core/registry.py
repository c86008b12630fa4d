"""The plugin registry: per-operation rules keyed by the real fx targets.

A target is a module class (matched through its MRO), a function object
(``torch.conv2d``, ``F.max_pool2d``, ``operator.add``) or a tensor method name
given as ``Method("view")``.  Built-in plugins and third-party ones both arrive
through the entry-point group ``rfscope.plugins``: each entry point names a
callable ``register(registry)``.

>>> import torch.nn as nn
>>> class Shift(nn.Module):  # an op of the user's own
...     def forward(self, x):
...         return x
>>> reg = Registry()
>>> _ = reg.register(Plugin("my-shift", (Shift,), rf=lambda ctx: ctx.first))
>>> reg.lookup_module(Shift()).name
'my-shift'
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import torch

from rfscope.core.errors import RfscopeError
from rfscope.core.locks import TRACE_LOCK

if TYPE_CHECKING:
    from rfscope.core.context import OpContext
    from rfscope.core.geometry import Geometry
    from rfscope.core.initview import InitContext, WeightView

__all__ = ["Method", "Plugin", "Registry", "PluginError", "default_registry", "ENTRY_POINT_GROUP", "target_name",
           "node_target_name"]

ENTRY_POINT_GROUP = "rfscope.plugins"
_BUILTIN_PREFIX = "rfscope.plugins"


@dataclass(frozen=True)
class Method:
    """A tensor method target, as in an fx ``call_method`` node (``x.view(...)``)."""

    name: str


class PluginError(RfscopeError, RuntimeError):
    """A plugin is malformed, registered twice, or raised while analysing a node."""


@dataclass(frozen=True)
class Plugin:
    """One rule set for one family of operations.

    ``rf(ctx)`` returns the output's :class:`~rfscope.core.state.TensorRF` (or a tuple of
    them for multi-output ops); ``macs(ctx)`` the multiply-accumulates of the call;
    ``geometry(ctx)`` the :class:`~rfscope.core.geometry.Geometry` of a sliding-window op
    (convolutions and pools: what counting and the design diagnostics read);
    ``init_view(ctx)`` the :class:`~rfscope.core.initview.WeightView` of a weighted call, whose
    weights the initialisation check then judges (see :mod:`rfscope.core.initview`).
    Any may be ``None``.  ``override=True`` replaces an earlier registration
    for the same targets instead of raising.
    """

    name: str
    targets: tuple[Any, ...]
    rf: Callable[[OpContext], Any] | None = None
    macs: Callable[[OpContext], int] | None = None
    override: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    geometry: Callable[[OpContext], Geometry | None] | None = None
    #: what kind of op this is, for the passes (see :mod:`rfscope.core.traits`)
    traits: frozenset[str] = frozenset()
    init_view: Callable[[InitContext], WeightView | None] | None = None
    #: the rule on per-position tables (:mod:`rfscope.core.positions`): used when an input is a
    #: table, or when ``rf`` cannot state the result periodically (``None``: no such rule)
    table: Callable[[OpContext], Any] | None = None


def target_name(t: Any) -> str:
    """Readable name of a call target: ``torch.conv2d``, ``Tensor.view``, ``operator.add``,
    ``aten.convolution.default``, ``torch.nn.functional.relu``, ``my_pkg.MyLayer``.

    >>> import operator, torch
    >>> [target_name(x) for x in (torch.conv2d, Method("view"), operator.add, torch.ops.aten.relu.default)]
    ['torch.conv2d', 'Tensor.view', 'operator.add', 'aten.relu.default']
    """
    if isinstance(t, Method):
        return f"Tensor.{t.name}"
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)
    if name.startswith("_VariableFunctionsClass."):  # torch.sigmoid, torch.cat ... (C builtins)
        return f"torch.{name.split('.', 1)[1]}"
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if not mod or mod.startswith("torch._C"):
        return f"torch.{name}"
    return f"{mod}.{name}"


def node_target_name(n: Any) -> str:
    """Readable name of a function or method node's target (``torch.conv2d``, ``Tensor.view``)."""
    return target_name(Method(str(n.target)) if n.op == "call_method" else n.target)


#: a registration waiting for its module: (module, register, entry point that asked for it or None)
_Deferred = tuple[str, Callable[["Registry"], None], Any]


class Registry:
    """Maps fx targets to plugins.

    Thread safety: registration, plugin loading and the deferred registrations all hold
    :data:`rfscope.core.locks.TRACE_LOCK`, so a registry can be shared by threads that analyse at
    once; lookups read a dict and take no lock.  A plugin registered while another thread
    analyses applies to the nodes that analysis has not reached yet: register plugins first.
    """

    def __init__(self) -> None:
        self._by_target: dict[Any, Plugin] = {}
        self._loaded = False
        self._loading = False  # entry points are being loaded (by the thread holding the lock)
        self._deferred: list[_Deferred] = []
        self._current_ep: Any = None  # third-party entry point being loaded, if any
        self.load_errors: list[str] = []

    # -- registration -------------------------------------------------
    def register(self, plugin: Plugin) -> Plugin:
        """Add ``plugin``; a second plugin for the same target is an error unless it overrides.

        Raises
        ------
        PluginError
            The plugin names no targets, names a target by a string, or a target already has
            another plugin and ``plugin.override`` is false.
        """
        with TRACE_LOCK:
            return self._register(plugin)

    def _register(self, plugin: Plugin) -> Plugin:
        if not plugin.targets:
            raise PluginError(f"plugin {plugin.name!r} names no targets")
        for t in plugin.targets:
            if isinstance(t, str):
                raise PluginError(
                    f"plugin {plugin.name!r}: target {t!r} is a string; use Method({t!r}) for "
                    "tensor methods, or the module class / function object itself"
                )
            old = self._by_target.get(t)
            if old is not None and old.name != plugin.name and not plugin.override:
                raise PluginError(
                    f"plugin {plugin.name!r} registers {target_name(t)}, already handled by "
                    f"{old.name!r}; pass override=True to replace it"
                )
        for t in plugin.targets:
            self._by_target[t] = plugin
        return plugin

    def add(
        self,
        name: str,
        targets: Iterable[Any],
        *,
        rf: Callable[[OpContext], Any] | None = None,
        macs: Callable[[OpContext], int] | None = None,
        override: bool = False,
        geometry: Callable[[OpContext], Geometry | None] | None = None,
        traits: Iterable[str] = (),
        init_view: Callable[[InitContext], WeightView | None] | None = None,
        table: Callable[[OpContext], Any] | None = None,
    ) -> Plugin:
        """Shorthand for ``register(Plugin(name, tuple(targets), rf, macs, override, ...))``."""
        return self.register(Plugin(name, tuple(targets), rf, macs, override, geometry=geometry,
                                    traits=frozenset(traits), init_view=init_view, table=table))

    def unregister(self, name: str) -> None:
        with TRACE_LOCK:
            for t, p in list(self._by_target.items()):
                if p.name == name:
                    del self._by_target[t]

    # -- lookup -------------------------------------------------------
    def lookup_module(self, module: Any) -> Plugin | None:
        """Plugin for a module's class, found through its MRO.

        A subclass that overrides ``forward`` does not inherit its parent's plugin
        (torchvision's ``LayerNorm2d`` permutes before normalising): it is traced
        through instead, unless a plugin names it.
        """
        self.ensure_loaded()
        return self._lookup_class(type(module))

    def _lookup_class(self, cls: type) -> Plugin | None:
        for c in cls.__mro__:
            p = self._by_target.get(c)
            if p is not None:
                return p
            if "forward" in c.__dict__:
                return None
        return None

    def lookup(self, target: Any) -> Plugin | None:
        self.ensure_loaded()
        try:
            return self._by_target.get(target)
        except TypeError:  # unhashable target
            return None

    def has_module_class(self, cls: type) -> bool:
        self.ensure_loaded()
        return self._lookup_class(cls) is not None

    def copy(self) -> Registry:
        """An independent registry holding this one's plugins (loaded first) and pending registrations.

        Registering into the copy never changes this registry: per-analysis overrides use it.

        >>> base = Registry()
        >>> mine = base.copy()
        >>> _ = mine.register(Plugin("no-relu", (torch.nn.ReLU,), override=True))
        >>> base.lookup_module(torch.nn.ReLU()).name != mine.lookup_module(torch.nn.ReLU()).name
        True
        """
        self.ensure_loaded()
        with TRACE_LOCK:
            new = Registry()
            new._by_target = dict(self._by_target)
            new._deferred = list(self._deferred)
            new._loaded = True
            new.load_errors = list(self.load_errors)
        return new

    def with_overrides(self, plugins: Iterable[Plugin]) -> Registry:
        """A :meth:`copy` in which ``plugins`` replace the plugins of their targets (registered with
        ``override=True``), the way ``FlopCounterMode(custom_mapping=...)`` merges its mapping over
        the defaults without touching them.

        Raises
        ------
        PluginError
            A plugin is malformed (no targets, a string target).
        """
        new = self.copy()
        for p in plugins:
            new.register(dataclasses.replace(p, override=True))
        return new

    def plugins(self) -> list[Plugin]:
        self.ensure_loaded()
        seen: dict[str, Plugin] = {}
        for p in list(self._by_target.values()):
            seen.setdefault(p.name, p)
        return list(seen.values())

    # -- entry points -------------------------------------------------
    def ensure_loaded(self) -> None:
        """Load the entry points once, and run deferred registrations whose module is now imported.

        Another thread waits until loading has finished (it would otherwise see half the
        plugins and report their ops as unsupported); a plugin that looks something up while
        it registers (same thread) sees the registry as loaded so far.
        """
        if self._loaded and not any(d[0] in sys.modules for d in self._deferred):
            return  # the common case takes no lock (lookups would wait for another thread's trace)
        with TRACE_LOCK:
            if not self._loaded and not self._loading:
                self._loading = True
                try:
                    self.load_entry_points()
                    self._loaded = True
                finally:
                    self._loading = False
            if self._deferred:
                self._run_deferred()

    def when_imported(self, module: str, register: Callable[[Registry], None]) -> None:
        """Run ``register(self)`` once ``module`` has been imported (by the user's model).

        Plugins for optional libraries use this so that loading rfscope never pays
        for importing them (torchvision pulls in torch._dynamo: seconds per start).
        A deferred registration of a third-party entry point that fails is rolled back
        and reported like a failing entry point.
        """
        with TRACE_LOCK:
            if module in sys.modules:
                register(self)
            else:
                self._deferred.append((module, register, self._current_ep))

    def _run_deferred(self) -> None:
        ready = [d for d in self._deferred if d[0] in sys.modules]
        if ready:
            self._deferred = [d for d in self._deferred if d[0] not in sys.modules]
            for _, fn, ep in ready:
                if ep is None:
                    fn(self)
                else:
                    self._contained(ep, fn)

    def _contained(self, ep: Any, register: Callable[[Registry], None]) -> None:
        """Run a third-party ``register(self)``; if it raises (even ``SystemExit`` or
        ``KeyboardInterrupt``), undo everything it registered, warn, and record it in ``load_errors``.

        Called with the lock held, so the snapshot sees no other thread's registrations.
        """
        from rfscope.core import shape_rules as fastshape

        by_target, deferred = dict(self._by_target), list(self._deferred)
        rules = fastshape._function_rules()
        outer, self._current_ep = self._current_ep, ep
        try:
            register(self)
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - a broken plugin must not break us
            self._by_target, self._deferred = by_target, deferred
            fastshape._restore_function_rules(rules)
            what = f"SystemExit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            msg = (
                f"rfscope: skipping plugin entry point {ep.name!r} ({ep.value}): {what}; none of its "
                "registrations were kept. Set RFSCOPE_DISABLE_PLUGIN_AUTOLOAD=1 to skip all third-party plugins."
            )
            self.load_errors.append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        finally:
            self._current_ep = outer

    def load_entry_points(self) -> None:
        """Load built-in plugins, then third-party ones (unless RFSCOPE_DISABLE_PLUGIN_AUTOLOAD=1).

        A third-party entry point that fails to load or register is warned about and skipped,
        with all of its registrations rolled back (see :meth:`_contained`).
        """
        with TRACE_LOCK:
            # the one import from this layer upwards: the built-in plugins are listed in one place
            from importlib import import_module

            from rfscope.plugins import BUILTIN

            for mod in BUILTIN:  # a missing or broken built-in is an error, never silence
                import_module(f"{_BUILTIN_PREFIX}.{mod}").register(self)
            if os.environ.get("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0"):
                return
            eps = [e for e in entry_points(group=ENTRY_POINT_GROUP) if not e.value.startswith(_BUILTIN_PREFIX)]
            for ep in sorted(eps, key=lambda e: e.name):
                self._contained(ep, _loader(ep))


def _loader(ep: Any) -> Callable[[Registry], None]:
    """``register(registry)`` that imports the entry point first (so an import error is contained too)."""

    def load(reg: Registry) -> None:
        ep.load()(reg)

    return load


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry used when ``analyze`` is not given one (created once, under the lock)."""
    global _DEFAULT
    if _DEFAULT is None:
        with TRACE_LOCK:
            if _DEFAULT is None:
                _DEFAULT = Registry()
    return _DEFAULT
