"""Trace a model into an fx graph and propagate shapes on the meta device.

The user's model is never touched: tracing runs on a structural copy of the
module tree (new module objects in eval mode, without the user's hooks) whose
buffers and tensor attributes are private clones, so a forward that updates its
state in place (``self.steps += 1``, ``ema.mul_()``, ``hist[0] = v``) updates the
copy.  Parameters are shared (copying every weight would cost more than the whole
analysis) and guarded: while the copy is traced, an in-place write to a parameter's
storage (weight clipping under ``no_grad``) is refused, and ``trace="auto"`` then
uses ``torch.export`` on a meta copy.  Shapes propagate on meta tensors — shape rules read only tensor metadata, and a
module that must really run gets a meta copy of itself — so analysis costs the
same at 224² or 4096² and works for models built on ``meta``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.fx as fx
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.utils._python_dispatch import TorchDispatchMode

from ._locks import running, serialised
from .fastcopy import _ATOMIC, _plain, _value, deepcopy_modules
from .fastshape import ModuleCallCache, _like, fast_module_output
from .registry import Registry

__all__ = ["meta_copy", "structural_copy", "own_tensors", "RFTracer", "trace", "propagate_shapes", "TraceError",
           "keep_rng_state", "keeps_rng_state", "tree_depth", "deep_tree", "call_deep", "deep_entry",
           "named_modules", "modules"]

_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R")


class TraceError(RuntimeError):
    """The model could not be traced or its shapes could not be propagated."""

    #: module path being traced when symbolic tracing failed (None when unknown)
    module: str | None = None


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``model`` with every parameter and buffer on ``meta``.

    Tensor identity is preserved: a weight tied in two places is one meta tensor.
    The copy is put in eval mode (BatchNorm uses running statistics).
    """
    memo: dict[int, Any] = {}
    for m in modules(model):
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = _meta_twin(t)
    cp = deepcopy_modules(model, memo)  # copy.deepcopy, minus its per-module overhead
    clear_hooks(cp)  # hooks belong to the user; the copy must not run them
    cp.eval()
    return cp


#: a module's hook dictionaries (forward, backward, state-dict...): emptied on every copy
_HOOK_DICTS = frozenset(k for k, v in vars(torch.nn.Module()).items() if isinstance(v, dict) and "hook" in k)


def own_tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors ``m`` itself holds (not its children's): parameters, buffers, tensor attributes."""
    return [t for t in (*m._parameters.values(), *m._buffers.values(), *vars(m).values())
            if isinstance(t, torch.Tensor)]


def structural_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the module tree for tracing and shape rules.

    ``copy.deepcopy`` semantics (new module objects, copied attributes, references between
    modules mapped to the copies) except for tensors: parameters are the user's own objects
    (:func:`trace` refuses in-place writes to them, shape propagation reads only their
    metadata), buffers and tensor attributes are clones (real values, so a forward that
    branches on a flag buffer traces as it runs, and updates them in place on the copy);
    tied tensors stay tied.  The copy has no hooks and is in eval mode.  A class with its own
    copy protocol makes the whole tree a :func:`meta_copy`.
    """
    tree = modules(model)
    if not all(_plain(type(m)) for m in tree):
        return meta_copy(model)
    memo: dict[int, Any] = {}
    for m in tree:
        for t in own_tensors(m):
            if id(t) not in memo:
                memo[id(t)] = _private_twin(t)
        memo[id(m)] = type(m).__new__(type(m))
    for m in tree:
        d: dict[str, Any] = {}
        for k, v in m.__dict__.items():
            if type(v) in _ATOMIC:
                d[k] = v
            elif k in ("_parameters", "_buffers"):
                d[k] = {name: None if t is None else memo[id(t)] for name, t in v.items()}
            elif k == "_modules":
                d[k] = {name: None if c is None else memo[id(c)] for name, c in v.items()}
            elif k in _HOOK_DICTS:
                d[k] = type(v)()
            else:
                d[k] = _value(v, memo)
        d["training"] = False
        memo[id(m)].__dict__.update(d)
    return memo[id(model)]  # type: ignore[no-any-return]


def _private_twin(t: torch.Tensor) -> torch.Tensor:
    """The structural copy's version of a user tensor: a parameter itself (see :func:`trace`),
    any other tensor a detached clone (a forward may read and update a buffer's value)."""
    if isinstance(t, torch.nn.Parameter):
        return t
    if t.is_meta:
        return _meta_twin(t)
    c = t.detach().clone()
    return c.requires_grad_() if t.requires_grad and c.is_floating_point() else c


class _ParameterWriteGuard(TorchDispatchMode):
    """Refuses any ATen op that writes into the storage of one of the given (name, real tensor) pairs.

    Active while the structural copy is traced: fx proxies parameters reached as attributes,
    but a forward can reach the real objects (``for p in self.parameters(): p.clamp_(...)``)
    and would run that update on the user's weights.
    """

    def __init__(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr(): name for name, t in tensors if not t.is_meta
                         and t.numel()}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        if schema.is_mutable and self.storages:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is None or not a.alias_info.is_write:
                    continue
                x = args[i] if i < len(args) else kwargs.get(a.name)
                for t in x if isinstance(x, (list, tuple)) else (x,):
                    if isinstance(t, torch.Tensor) and not t.is_meta and t.numel():
                        name = self.storages.get(t.untyped_storage().data_ptr())
                        if name is not None:
                            raise TraceError(f"the forward writes to parameter {name!r} in place ({func}); "
                                             "rfscope never modifies the model")
        return func(*args, **kwargs)


def clear_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """Remove every hook from a *copy*: the user's hooks (and their side effects) stay theirs."""
    for m in modules(model):
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None)
            if d:
                d.clear()
    return model


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t, device="meta")``; on a meta ``t`` that goes through a slow Python
    decomposition (models built on meta have thousands of tensors), so contiguous ones take
    the equivalent ``empty_strided``."""
    if t.device.type == "meta" and t.is_contiguous() and type(t) in (torch.Tensor, torch.nn.Parameter):
        return _like(t)  # the same empty_strided as fastshape
    return torch.empty_like(t, device="meta")


def _meta_twin(t: torch.Tensor) -> torch.Tensor:
    """``t`` on meta, a Parameter (with its ``requires_grad``) if ``t`` is one."""
    m = _meta_like(t)
    return torch.nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else m


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


def named_modules(model: torch.nn.Module, remove_duplicate: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """``list(model.named_modules(remove_duplicate=...))``, walked without recursion.

    ``nn.Module.named_modules`` nests one generator per level, so a walk costs depth x modules
    steps (minutes for a 5,000-level model) and fails past the recursion limit; this one is
    linear and has no depth limit.
    """
    out: list[tuple[str, torch.nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, torch.nn.Module]] = [("", model)]
    while stack:
        name, m = stack.pop()
        if remove_duplicate:
            if id(m) in seen:
                continue
            seen.add(id(m))
        out.append((name, m))
        kids = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
        stack.extend(reversed(kids))
    return out


def modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``list(model.modules())`` without recursion (see :func:`named_modules`)."""
    return [m for _, m in named_modules(model)]


def tree_depth(model: torch.nn.Module) -> int:
    """Nesting depth of the module tree (1 for a module without children), walked iteratively."""
    best, stack, seen = 0, [(model, 1)], {id(model)}
    while stack:
        m, d = stack.pop()
        best = max(best, d)
        for c in m._modules.values():
            if c is not None and id(c) not in seen:
                seen.add(id(c))
                stack.append((c, d + 1))
    return best


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


class RFTracer(fx.Tracer):
    """Keeps every module class that has a plugin (and user-named paths) as a leaf."""

    def __init__(self, registry: Registry, leaf_modules: Iterable[str] = ()) -> None:
        super().__init__()
        self.registry = registry
        self.leaf_paths = set(leaf_modules)
        self._thread = threading.get_ident()

    # While tracing, fx patches nn.Module.__call__/__getattr__ for every thread: another thread's
    # module calls and attribute reads reach this tracer, which hands them straight back.
    def call_module(self, m: torch.nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_paths:
            return True
        if self.registry.has_module_class(type(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@serialised  # fx patches nn.Module process-wide while it traces: one trace at a time (rfscope._locks)
def trace(
    model: torch.nn.Module, registry: Registry, leaf_modules: Iterable[str] = ()
) -> fx.GraphModule:
    tracer = RFTracer(registry, leaf_modules)
    try:
        params = ((f"{path}.{k}" if path else k, p) for path, m in named_modules(model)
                  for k, p in m._parameters.items() if p is not None)
        with _ParameterWriteGuard(params), _TypeTests(tracer) as tests:
            graph = tracer.trace(model)
    except Exception as e:
        err = TraceError(f"torch.fx could not trace the model: {type(e).__name__}: {e}")
        # the module being traced when it failed (fx leaves its stack as it was): see rfscope.fallback
        err.module = next(reversed(tracer.module_stack.values()))[0] if tracer.module_stack else None
        raise err from e
    gm = _graph_module(tracer.root, graph, type(model).__name__)
    if tests.seen:
        gm.meta[TYPE_TESTS] = tests.seen
    return gm


#: ``GraphModule.meta`` key: where the forward tested the type of a traced value (see :class:`_TypeTests`)
TYPE_TESTS = "rfscope_type_tests"


class _TypeTests:
    """Records ``torch.jit.isinstance`` calls on fx proxies while tracing.

    Such a test is answered for the Proxy (``False`` for ``torch.Tensor``), not for the tensor the
    model really gets, so the graph may follow another branch than the model (MONAI's ``UpCat``
    drops its skip connection).  ``torch.jit.isinstance`` is swapped for a recording wrapper for
    the duration of the trace (traces are serialised; other callers get the same answers).
    """

    def __init__(self, tracer: fx.Tracer) -> None:
        self.tracer = tracer
        self.seen: list[str] = []

    def __enter__(self) -> _TypeTests:
        self.original = orig = torch.jit.isinstance

        def recording(obj: Any, target_type: Any) -> bool:
            if isinstance(obj, fx.Proxy):
                stack = getattr(self.tracer, "module_stack", None)
                where = next(reversed(stack.values()))[0] if stack else ""
                self.seen.append(f"torch.jit.isinstance in {where or 'the model'!r}")
            return orig(obj, target_type)

        torch.jit.isinstance = recording  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.jit.isinstance = self.original  # type: ignore[assignment]


def _graph_module(root: torch.nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated on first call, not now: the analysis only
    interprets the graph, and code generation costs about a tenth of an analysis."""
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:  # pragma: no cover - older torch
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, name)


class _ShapePass:
    """Runs the graph once on meta tensors and stores each node's value in ``node.meta["val"]``.

    What ``fx.Interpreter.run`` does, minus its per-node bookkeeping (context managers,
    last-use tracking, attribute walks): modules and attributes are looked up in dicts
    built once, and BatchNorm/Conv/Linear... take the shortcuts of :mod:`rfscope.fastshape`.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(named_modules(gm, remove_duplicate=False))
        self.calls = ModuleCallCache()
        self._metas: dict[int, Any] = {}  # id(user tensor or module) -> its meta copy

    def _meta_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A meta tensor like ``t`` (one per tensor, so tied tensors stay tied)."""
        hit = self._metas.get(id(t))
        if hit is None:
            hit = self._metas[id(t)] = _meta_twin(t)
        return hit

    def _runnable(self, m: torch.nn.Module) -> torch.nn.Module:
        """``m`` itself when it holds no tensor, else a meta copy of it (made once)."""
        hit = self._metas.get(id(m))
        if hit is None:
            hit = self._metas[id(m)] = m if _runs_as_is(m) else meta_copy(m)
        return hit

    def fetch_attr(self, target: str) -> Any:
        owner, _, attr = target.rpartition(".")
        obj: Any = self.modules.get(owner)
        if obj is None:  # an attribute of a plain (non-module) object
            obj, attr = self.gm, target
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RuntimeError(f"node referenced nonexistent target {target}")
            obj = getattr(obj, part)
        return obj

    def run(self, *args: Any) -> None:
        env: dict[fx.Node, Any] = {}
        inputs = iter(args)
        value = env.__getitem__
        for n in self.gm.graph.nodes:
            op = n.op
            try:
                if op == "placeholder":
                    out = self._placeholder(n, inputs)
                elif op == "get_attr":
                    out = self.fetch_attr(n.target)
                    if isinstance(out, torch.Tensor):
                        out = self._meta_tensor(out)
                else:
                    a = _thaw(fx.node.map_arg(n.args, value))
                    kw = _thaw(fx.node.map_arg(n.kwargs, value))
                    if op == "call_module":
                        out = self._call_module(str(n.target), a, kw)
                    elif op == "call_function":
                        fn = n.target
                        out = self.calls.call_function(fn, a, kw, lambda: fn(*a, **kw))  # run now, in this step
                    elif op == "call_method":
                        out = getattr(a[0], n.target)(*a[1:], **kw)
                    else:  # output
                        out = a[0]
            except Exception as e:
                raise self._error(n, e) from e
            env[n] = out
            n.meta["val"] = out

    @staticmethod
    def _placeholder(n: fx.Node, inputs: Any) -> Any:
        if str(n.target).startswith("*"):
            return list(inputs)
        try:
            return next(inputs)
        except StopIteration:
            if n.args:
                return n.args[0]
            raise RuntimeError(f"expected an input for {n.target!r}, but the example inputs ran out") from None

    def _call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        # BatchNorm, Conv, Linear... skip their slow Python meta kernels, and a repeated
        # identical torch.nn call reuses the first one's output layout (see fastshape)
        m = self.modules[target]
        out = fast_module_output(m, args, kwargs)
        if out is not None:
            return out
        return self.calls.call(m, args, kwargs, lambda: self._runnable(m)(*args, **kwargs))

    def _error(self, n: fx.Node, e: Exception) -> TraceError:
        if n.op == "call_module":
            args = fx.node.map_arg(n.args, lambda a: a.meta.get("val"))
            hint = _layer_problem(str(n.target), self.modules.get(str(n.target)), args)
            if hint:
                return TraceError(hint)
        where = n.meta.get("nn_module_stack")
        mod = next(reversed(where.values()))[0] if where else None
        loc = f" in module {mod!r}" if mod else ""
        return TraceError(
            f"shape propagation failed at node {n.name!r}{loc} ({_target_name(n)}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )


_FROZEN = (immutable_list, immutable_dict)


def _thaw(x: Any) -> Any:
    """fx's immutable argument lists/dicts as the plain ones the model's own code would get (a
    function may fill in a list it is given, as Swin3d's ``_get_window_and_shift_size`` does)."""
    t = type(x)
    if t is tuple:
        return tuple(_thaw(v) for v in x) if any(type(v) in _FROZEN for v in x) else x
    if t is immutable_list:
        return [_thaw(v) for v in x]
    if t is immutable_dict:
        return {k: _thaw(v) for k, v in x.items()}
    return x


def _runs_as_is(m: torch.nn.Module) -> bool:
    """The module (of the structural copy: its Python state is already a copy) holds no tensor at
    all, so calling it touches nothing of the user's (tensors, even meta ones, are the user's)."""
    return not any(own_tensors(sub) for sub in modules(m))


def _layer_problem(name: str, m: Any, args: Any) -> str | None:
    """A conv/pool/norm/linear layer's input has the wrong channel count or is too small, in words."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    conv = isinstance(m, torch.nn.modules.conv._ConvNd)
    pool = isinstance(m, (torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd))
    cls = type(m).__name__
    want = {torch.nn.modules.batchnorm._BatchNorm: ("num_features", 1), torch.nn.GroupNorm: ("num_channels", 1),
            torch.nn.Linear: ("in_features", -1)}
    for c, (attr, dim) in want.items():
        if x is not None and isinstance(m, c) and x.dim() > max(dim, 0) and int(x.shape[dim]) != getattr(m, attr):
            where = "channels" if dim == 1 else "features (last dim)"
            return f"layer {name!r} ({cls}) expects {getattr(m, attr)} input {where} but gets {int(x.shape[dim])}"
    if x is None or not (conv or pool):
        return None
    nn_ = torch.nn
    dims = {nn_.MaxPool1d: 1, nn_.AvgPool1d: 1, nn_.MaxPool2d: 2, nn_.AvgPool2d: 2, nn_.MaxPool3d: 3, nn_.AvgPool3d: 3}
    n = len(m.kernel_size) if conv else next((v for c, v in dims.items() if isinstance(m, c)), x.dim() - 2)
    if x.dim() not in (n + 1, n + 2):
        return (f"layer {name!r} ({cls}) expects a {n + 1}-d or {n + 2}-d input but gets a {x.dim()}-d one "
                f"(shape {'x'.join(str(int(d)) for d in x.shape)})")
    if conv and int(x.shape[-n - 1]) != m.in_channels:
        c = m.in_channels
        return (f"layer {name!r} ({cls}) expects {c} input channels but gets {int(x.shape[-n - 1])}; "
                f"if it is the first layer use --input-shape {c},H,W (input_shape=(N, {c}, ...))")

    def tup(v: Any) -> tuple[int, ...]:
        return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n

    pad = getattr(m, "padding", 0)
    p = (0,) * n if isinstance(pad, str) else tup(pad)
    need = tuple(max(1, dd * (kk - 1) + 1 - 2 * pp)
                 for kk, dd, pp in zip(tup(m.kernel_size), tup(getattr(m, "dilation", 1)), p, strict=False))
    got = tuple(int(s) for s in x.shape[-n:])
    if not getattr(m, "transposed", False) and any(g < q for g, q in zip(got, need, strict=False)):
        fmt = lambda t: "x".join(map(str, t))
        return (f"input too small for layer {name!r} ({cls}): it gets {fmt(got)} positions but needs at least "
                f"{fmt(need)}; use a larger --input-shape (input_shape)")
    return None


def _target_name(n: fx.Node) -> str:
    t = n.target
    if isinstance(t, str):
        return t
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _meta_like(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Run ``gm`` on meta tensors, storing each node's value in ``node.meta['val']``."""
    with torch.no_grad(), running():  # not while torch.export traces (rfscope._locks)
        _ShapePass(gm).run(*[_to_meta(x) for x in example_inputs])
