"""Weight-initialisation check: symmetry, dead units, mean/scale, signal across depth, NaN/Inf.

The check reads the user's *real* weights (never modifying them) and the graph
that :func:`rfscope.analyze` traced, so it knows what consumes every layer.

Rules are keyed by real fx targets, like the receptive-field plugins: an
:class:`InitRule` maps module classes / function objects to a ``view`` function
that returns the layer's :class:`WeightView` (weight, bias, which weight dim
indexes output units and which input units).  Built-in rules cover
Linear/``F.linear``, Conv1-3d/``F.conv*`` and ConvTranspose1-3d/``F.conv_transpose*``;
add one with ``default_init_rules().register(InitRule(...))``, or give an RF
plugin ``extra={"init_view": view}``.  Layers without a rule only get the NaN/Inf
check (norm layers, embeddings, LayerScale gammas: their zeros and constants are
legitimate), and so do frozen weights (``requires_grad=False``: a pretrained base
is not an initialisation); both still take part in the forward pass.

Checks (``Finding.check``):

* ``nonfinite`` (error): NaN/Inf in a parameter or buffer.
* ``symmetric-units`` (error): every unit of a layer has the same incoming weights
  and bias (all-zero or constant weights) *and* every consumer treats the units
  identically (identical outgoing weights), so they stay identical forever.
  A zero layer whose consumer has random weights (LoRA's B, zero convs, a zero
  classifier) is fine: the consumer breaks the symmetry.
* ``duplicate-units`` (error): some (not all) units are copies of each other, in
  and out.
* ``dead-units`` (error): zero incoming weights and bias <= 0 feeding only
  ReLU-like activations (through BatchNorm with beta = 0): output and gradient 0.
* ``nonzero-mean`` (warning): ``|mean| > std`` of a weight with >= 32 elements.
* ``scale`` (warning): std outside ``[min(refs)/4, 4*max(refs)]`` where refs are
  PyTorch's default ``1/sqrt(3 fan_in)``, He ``sqrt(2/fan_in)``, ``sqrt(2/fan_out)``,
  Xavier ``sqrt(2/(fan_in+fan_out))`` and 0.02; only when no normalisation layer
  follows before the next weighted layer, and not for weights tied to another kind
  of layer or exactly constant ones.
* ``signal-exploding`` / ``signal-vanishing`` (warning): a data-free forward pass
  (copy of the model, float32, eval mode but BatchNorm on batch statistics as in
  training, N(0,1) inputs) tracks the output std of every weighted layer; a layer
  at more than 1000x (less than 1/1000) the first layer's std is reported.
  Layers with constant weights or an all-zero input are left out.
* ``signal-nonfinite`` (error): the forward pass produced NaN/Inf.
* ``signal-skipped`` (info): the forward pass could not run.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.locks import TRACE_LOCK, running
from rfscope.core.registry import Method, Registry, default_registry
from rfscope.trace.runtime import deep_entry, keep_rng_state

if TYPE_CHECKING:
    from rfscope.report import Report

__all__ = [
    "Finding",
    "InitCheckError",
    "InitContext",
    "InitRule",
    "InitRules",
    "WeightView",
    "check_init",
    "default_init_rules",
]

MEAN_RATIO = 1.0
SCALE_FACTOR = 4.0
SIGNAL_RATIO = 1e3


class InitCheckError(ValueError):
    """The init check cannot run on this model (meta weights, bad arguments)."""


@dataclass(frozen=True)
class Finding:
    """One init-check result: ``check`` id, ``severity`` (error/warning/info), where, and the numbers."""

    check: str
    severity: str
    message: str
    param: str | None = None
    node: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: the node's row label (module path / call), for display
    layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": self.message,
                "param": self.param, "node": self.node, "layer": self.layer, "evidence": self.evidence}

    def __str__(self) -> str:
        where = self.param or self.layer or self.node or "model"
        return f"{self.severity}: {self.check}: {where}: {self.message}"


# ---------------------------------------------------------------------------
# rules
@dataclass(frozen=True)
class WeightView:
    """A weighted layer's real tensors: units are ``weight``'s ``out_dim`` slices."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_name: str
    bias_name: str | None = None
    out_dim: int = 0
    in_dim: int = 1
    groups: int = 1

    def fans(self) -> tuple[int, int]:
        """PyTorch's fan-in / fan-out (``nn.init._calculate_fan_in_and_fan_out``)."""
        w = self.weight
        rf = math.prod(w.shape[2:]) if w.dim() > 2 else 1
        return int(w.shape[1]) * rf, int(w.shape[0]) * rf

    def rows(self, with_bias: bool = True) -> torch.Tensor:
        """One row per output unit: its incoming weights, then its bias (unless ``with_bias=False``)."""
        w = self.weight.detach().float().movedim(self.out_dim, 0).reshape(self.weight.shape[self.out_dim], -1)
        if with_bias and self.bias is not None:
            w = torch.cat([w, self.bias.detach().float().reshape(-1, 1)], dim=1)
        return w

    def columns(self, spread: int) -> torch.Tensor | None:
        """One row per input unit: its outgoing weights (``spread`` inputs per unit after a flatten)."""
        if self.groups != 1:
            return None
        w = self.weight.detach().float().movedim(self.in_dim, 0)
        n_in = int(w.shape[0])
        if n_in % spread:
            return None
        return w.reshape(n_in // spread, -1)  # input index c*spread + p: unit c's block


@dataclass
class InitContext:
    """What a rule's ``view`` sees: the fx node, the real module (or None) and real-tensor lookup."""

    node: fx.Node
    module: nn.Module | None
    model: nn.Module
    names: dict[int, str]

    def tensor(self, arg: Any) -> torch.Tensor | None:
        """The real tensor behind an fx argument that is a ``get_attr`` node, else ``None``."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            obj: Any = self.model
            try:
                for part in str(arg.target).split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                return None
            return obj if isinstance(obj, torch.Tensor) else None
        return None

    def arg(self, index: int, name: str) -> Any:
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(name)

    def name(self, t: torch.Tensor | None) -> str | None:
        return None if t is None else self.names.get(id(t), "?")


@dataclass(frozen=True)
class InitRule:
    """``view(ctx)`` returns the :class:`WeightView` of one call (or ``None``) for the given targets."""

    name: str
    targets: tuple[Any, ...]
    view: Callable[[InitContext], WeightView | None]


class InitRules:
    """Init rules keyed by module class (through the MRO) or function object."""

    def __init__(self) -> None:
        self._by_target: dict[Any, InitRule] = {}

    def copy(self) -> InitRules:
        """An independent copy (extend it without touching the process-wide rules)."""
        new = InitRules()
        new._by_target = dict(self._by_target)
        return new

    def register(self, rule: InitRule) -> InitRule:
        for t in rule.targets:
            self._by_target[t] = rule
        return rule

    def has_exact(self, cls: type) -> bool:
        """A rule names ``cls`` itself (not through a base class)."""
        return cls in self._by_target

    def lookup_class(self, cls: type) -> InitRule | None:
        for c in cls.__mro__:
            if c in self._by_target:
                return self._by_target[c]
        return None

    def lookup(self, n: fx.Node, module: nn.Module | None, registry: Registry) -> InitRule | None:
        if module is not None:
            rule = self.lookup_class(type(module))
            if rule is not None:
                return rule
            p = registry.lookup_module(module)
        elif n.op == "call_method":
            p = registry.lookup(Method(str(n.target)))
        else:
            try:
                r = self._by_target.get(n.target)
            except TypeError:
                r = None
            if r is not None:
                return r
            p = registry.lookup(n.target)
        if p is not None and callable(p.extra.get("init_view")):
            return InitRule(p.name, p.targets, p.extra["init_view"])
        return None


def _module_view(ctx: InitContext) -> WeightView | None:
    m: Any = ctx.module
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    b = getattr(m, "bias", None)
    b = b if isinstance(b, torch.Tensor) else None
    transposed = bool(getattr(m, "transposed", False))
    return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b), 1 if transposed else 0,
                      0 if transposed else 1, int(getattr(m, "groups", 1)))


def _functional_view(transposed: bool) -> Callable[[InitContext], WeightView | None]:
    def view(ctx: InitContext) -> WeightView | None:
        w = ctx.tensor(ctx.arg(1, "weight"))
        if w is None:
            return None  # a computed weight (e.g. weight standardisation): not an init
        b = ctx.tensor(ctx.arg(2, "bias"))
        groups = 1
        if ctx.node.target not in (F.linear,):
            g = ctx.arg(6, "groups")
            groups = int(g) if isinstance(g, int) else 1
        return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b), 1 if transposed else 0,
                          0 if transposed else 1, groups)

    return view


def _aten_conv_view(ctx: InitContext) -> WeightView | None:
    w = ctx.tensor(ctx.arg(1, "weight"))
    if w is None:
        return None
    b = ctx.tensor(ctx.arg(2, "bias"))
    transposed = bool(ctx.arg(6, "transposed"))
    g = ctx.arg(8, "groups")
    return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b), 1 if transposed else 0, 0 if transposed else 1,
                      int(g) if isinstance(g, int) else 1)


_DEFAULT: InitRules | None = None


def default_init_rules() -> InitRules:
    """The process-wide rule set (built-ins: Linear, Conv, ConvTranspose and their functional forms).

    Built once, under :data:`rfscope.core.locks.TRACE_LOCK`, and published only when complete.
    """
    global _DEFAULT
    if _DEFAULT is not None:
        return _DEFAULT
    with TRACE_LOCK:
        if _DEFAULT is not None:
            return _DEFAULT
        from rfscope.plugins.conv import _FUNC, _FUNC_T  # the conv plugin's function lists (imported late:
        # rfscope.plugins imports rfscope)

        r = InitRules()
        r.register(InitRule("linear", (nn.Linear,), _module_view))
        r.register(InitRule("conv", (nn.modules.conv._ConvNd,), _module_view))
        r.register(InitRule("linear_f", (F.linear,), _functional_view(False)))
        r.register(InitRule("conv_f", tuple(dict.fromkeys(_FUNC)), _functional_view(False)))
        r.register(InitRule("conv_transpose_f", tuple(dict.fromkeys(_FUNC_T)), _functional_view(True)))
        # ATen graphs (the torch.export / make_fx fallbacks)
        r.register(InitRule("aten_linear", (torch.ops.aten.linear.default,), _functional_view(False)))
        r.register(InitRule("aten_convolution", (torch.ops.aten.convolution.default,), _aten_conv_view))
        _DEFAULT = r
    return _DEFAULT


# ---------------------------------------------------------------------------
# graph paths
_NORM_MODULES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.RMSNorm, nn.LocalResponseNorm,
)
_NORM_FUNCS: tuple[Any, ...] = (F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.rms_norm,
                                torch.batch_norm, torch.layer_norm, torch.group_norm)
_aten = torch.ops.aten
#: ATen overload packets (graphs of the fallback tracers)
_ATEN_NORM = {_aten.layer_norm, _aten.native_layer_norm, _aten.batch_norm, _aten.native_batch_norm,
              _aten._native_batch_norm_legit, _aten._native_batch_norm_legit_no_training,
              _aten._native_batch_norm_legit_functional, _aten.group_norm, _aten.native_group_norm,
              _aten.rms_norm, _aten.instance_norm}
_ATEN_RELU = {_aten.relu, _aten.relu_}
_ATEN_SAME = {_aten.relu, _aten.relu_, _aten.gelu, _aten.silu, _aten.sigmoid, _aten.tanh, _aten.hardtanh,
              _aten.hardswish, _aten.leaky_relu, _aten.clone}


def _packet(t: Any) -> Any:
    return getattr(t, "overloadpacket", None)


_RELU_MODULES: tuple[type, ...] = (nn.ReLU, nn.ReLU6)
_RELU_FUNCS: tuple[Any, ...] = (F.relu, F.relu_, F.relu6, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
#: per-unit functions that act the same on every unit
_SAME_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_SAME_FUNCS: tuple[Any, ...] = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
)
_SAME_METHODS = ("relu", "relu_", "sigmoid", "tanh", "contiguous")
_FLATTEN = (torch.flatten,)


@dataclass
class _End:
    kind: str  # "layer", "relu", "output", "other"
    node: fx.Node
    spread: int = 1
    via: tuple[fx.Node, ...] = ()


class _Graph:
    """The analysis graph with real modules and rule views attached."""

    def __init__(self, report: Report, model: nn.Module, rules: InitRules, registry: Registry) -> None:
        self.gm = report.gm
        self.report = report
        self.model = model
        self.names: dict[int, str] = {}
        for name, t in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(t), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), name)
        self.views: dict[fx.Node, WeightView] = {}
        self.modules: dict[fx.Node, nn.Module] = {}
        for n in self.gm.graph.nodes:
            if n.op not in ("call_module", "call_function", "call_method"):
                continue
            module = None
            if n.op == "call_module":
                try:
                    module = model.get_submodule(str(n.target))
                except AttributeError:
                    continue
                self.modules[n] = module
            rule = rules.lookup(n, module, registry)
            if rule is None:
                continue
            v = rule.view(InitContext(n, module, model, self.names))
            if v is not None and v.weight.dim() >= 2:
                self.views[n] = v

    def label(self, n: fx.Node) -> str:
        rec = self.report.records.get(n.name)
        return rec.label if rec is not None else n.name

    def is_data_input(self, user: fx.Node, n: fx.Node) -> bool:
        return bool(user.args) and user.args[0] is n

    def transparent(self, u: fx.Node) -> bool:
        m = self.modules.get(u)
        if m is not None:
            if isinstance(m, nn.PReLU):
                return m.num_parameters == 1
            return isinstance(m, _SAME_MODULES + (nn.modules.batchnorm._BatchNorm,))
        if u.op == "call_function":
            return u.target in _SAME_FUNCS or _packet(u.target) in _ATEN_SAME
        if u.op == "call_method":
            return u.target in _SAME_METHODS
        return False

    def is_relu(self, u: fx.Node) -> bool:
        m = self.modules.get(u)
        if m is not None:
            return isinstance(m, _RELU_MODULES)
        if u.op == "call_function":
            return u.target in _RELU_FUNCS or _packet(u.target) in _ATEN_RELU
        return u.op == "call_method" and u.target in _RELU_METHODS

    def flatten_spread(self, u: fx.Node) -> int | None:
        """Positions per channel if ``u`` flattens (N, C, *S) to (N, C*prod(S)), else None."""
        m = self.modules.get(u)
        is_flat = isinstance(m, nn.Flatten) or (u.op == "call_function" and u.target in _FLATTEN) \
            or (u.op == "call_method" and u.target == "flatten")
        if not is_flat or not u.args or not isinstance(u.args[0], fx.Node):
            return None
        x, y = u.args[0].meta.get("val"), u.meta.get("val")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2 or y.dim() != 2:
            return None
        if y.shape[0] != x.shape[0] or y.shape[1] != math.prod(x.shape[1:]):
            return None
        return math.prod(x.shape[2:])

    def ends(self, n: fx.Node, stop_at_relu: bool) -> list[_End]:
        """Where ``n``'s units go, through ops that treat every unit alike."""
        out: list[_End] = []
        stack: list[tuple[fx.Node, int, tuple[fx.Node, ...]]] = [(n, 1, ())]
        while stack:
            x, spread, via = stack.pop()
            for u in x.users:
                if u.op == "output":
                    out.append(_End("output", u, spread, via))
                elif stop_at_relu and self.is_relu(u):
                    out.append(_End("relu", u, spread, via))
                elif u in self.views and self.is_data_input(u, x):
                    out.append(_End("layer", u, spread, via))
                elif self.transparent(u) and self.is_data_input(u, x):
                    stack.append((u, spread, (*via, u)))
                elif (s := self.flatten_spread(u)) is not None and spread == 1:
                    stack.append((u, s, (*via, u)))
                else:
                    out.append(_End("other", u, spread, via))
        return out

    def normalised(self, n: fx.Node) -> bool:
        """A normalisation layer follows ``n`` on some path before the next weighted layer."""
        seen: set[fx.Node] = set()
        stack = list(n.users)
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            m = self.modules.get(u)
            if isinstance(m, _NORM_MODULES) or (u.op == "call_function" and (
                    u.target in _NORM_FUNCS or _packet(u.target) in _ATEN_NORM)):
                return True
            if u in self.views or u.op == "output":
                continue
            stack.extend(u.users)
        return False

    def bn_same(self, via: Iterable[fx.Node], units: torch.Tensor) -> bool:
        """BatchNorms on the path have the same affine parameters and statistics for ``units``."""
        for u in via:
            m = self.modules.get(u)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for t in (m.weight, m.bias, m.running_mean, m.running_var):
                    if isinstance(t, torch.Tensor) and t.dim() == 1:
                        v = t.detach().float()[units]
                        if not bool((v == v[0]).all()):
                            return False
        return True


# ---------------------------------------------------------------------------
def _f(x: Any) -> float:
    return float(f"{float(x):.6g}")


def _nonfinite(model: nn.Module, names: dict[int, str], wstats: dict[int, tuple[float, float]]) -> list[Finding]:
    found = []
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        d = t.detach()
        if math.isfinite(wstats.get(id(t), (math.nan, 0.0))[0]) or _finite(d):
            continue
        nan, inf = int(torch.isnan(d).sum()), int(torch.isinf(d).sum())
        if nan or inf:
            name = names.get(id(t), "?")
            found.append(Finding("nonfinite", "error", f"{nan} NaN and {inf} Inf values of {d.numel()}; "
                                 "re-initialise it (NaN/Inf propagate to every output)",
                                 param=name, evidence={"nan": nan, "inf": inf, "numel": d.numel()}))
    return found


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


def _dead(g: _Graph, n: fx.Node, v: WeightView) -> tuple[list[Finding], torch.Tensor]:
    """Units with zero incoming weights and non-positive bias that only feed ReLUs."""
    none = torch.zeros(0, dtype=torch.long)
    if v.groups != 1 and v.out_dim == 1:
        return [], none
    zero = v.rows(with_bias=False).abs().amax(dim=1) == 0
    if not bool(zero.any()):
        return [], none
    ends = g.ends(n, stop_at_relu=True)
    if not ends or any(e.kind != "relu" for e in ends):
        return [], none
    bns = [m for e in ends for u in e.via if isinstance(m := g.modules.get(u), nn.modules.batchnorm._BatchNorm)]
    if bns:  # a constant channel leaves BatchNorm (batch statistics) as beta
        dead = zero.clone()
        for m in bns:
            if m.bias is not None:
                dead &= m.bias.detach().float() <= 0
    else:
        b = v.bias.detach().float() if v.bias is not None else torch.zeros(len(zero))
        dead = zero & (b <= 0)
    idx = torch.nonzero(dead).flatten()
    if not len(idx):
        return [], none
    relus = sorted({g.label(e.node) for e in ends})
    msg = (f"{len(idx)} of {len(zero)} units have zero weights and bias <= 0 and feed only "
           f"{', '.join(repr(x) for x in relus)}: their output and gradient are 0 forever; initialise the weights "
           "randomly "
           "(e.g. leave PyTorch's default, or nn.init.kaiming_normal_)")
    return [Finding("dead-units", "error", msg, param=v.weight_name, node=n.name, layer=g.label(n),
                    evidence={"dead": len(idx), "units": len(zero), "indices": idx[:16].tolist(),
                              "relu": relus})], idx


def _symmetry(g: _Graph, n: fx.Node, v: WeightView, dead: torch.Tensor) -> list[Finding]:
    if v.groups != 1:
        return []  # units of different groups see different inputs
    ends = g.ends(n, stop_at_relu=False)
    if not ends or any(e.kind != "layer" for e in ends):
        return []  # the model output, a residual add, dropout...: units are told apart downstream
    rows = v.rows()
    n_out = rows.shape[0]
    if n_out < 2:
        return []
    keep = torch.ones(n_out, dtype=torch.bool)
    keep[dead] = False
    alive = torch.nonzero(keep).flatten()
    if len(alive) < 2:
        return []
    # Cheap screen: copies have equal random projections; most layers stop here.
    proj = rows[alive].double() @ torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(0),
                                              dtype=torch.float64)
    if len(torch.unique(proj)) == len(alive):
        return []
    _, inverse, counts = torch.unique(rows[alive], dim=0, return_inverse=True, return_counts=True)
    if bool((counts == 1).all()):
        return []
    groups = [alive[inverse == i] for i in torch.nonzero(counts > 1).flatten().tolist()]
    axis = _unit_axis(v, n)
    if axis is None or any(_unit_axis(g.views[e.node], e.node.args[0]) != axis for e in ends
                           if isinstance(e.node.args[0], fx.Node)):
        return []  # the consumer mixes another dim of the tensor than the one holding the units
    same: list[torch.Tensor] = []
    for units in groups:
        ok = True
        for e in ends:
            cols = g.views[e.node].columns(e.spread)
            if cols is None or cols.shape[0] != n_out or not g.bn_same(e.via, units):
                ok = False
                break
            c = cols[units]
            if not bool((c == c[0]).all()):
                ok = False
                break
        if ok:
            same.append(units)
    if not same:
        return []
    consumers = sorted({g.label(e.node) for e in ends})
    if len(same) == 1 and len(same[0]) == len(alive) == n_out:
        w = rows[0, :-1] if v.bias is not None else rows[0]
        const = _f(w[0]) if bool((w == w[0]).all()) else None
        msg = (f"all {n_out} units have identical incoming weights{' and bias' if v.bias is not None else ''}"
               f"{f' (constant {const})' if const is not None else ''} and {', '.join(repr(c) for c in consumers)} "
               "treats them identically: they get identical gradients and never diverge; initialise "
               "randomly (PyTorch's default, nn.init.kaiming_normal_ or xavier_uniform_)")
        return [Finding("symmetric-units", "error", msg, param=v.weight_name, node=n.name, layer=g.label(n),
                        evidence={"units": n_out, "constant": const, "consumers": consumers})]
    n_dup = sum(len(u) for u in same)
    msg = (f"{n_dup} of {n_out} units are copies of another unit (same incoming and outgoing weights, "
           f"{len(same)} groups): copies stay copies under gradient descent; re-initialise them randomly")
    return [Finding("duplicate-units", "error", msg, param=v.weight_name, node=n.name, layer=g.label(n),
                    evidence={"units": n_out, "duplicated": n_dup,
                              "groups": [u[:8].tolist() for u in same[:8]], "consumers": consumers})]


def _std_mean(w: torch.Tensor) -> tuple[float, float]:
    if w.numel() < 2:
        return 0.0, float(w.detach().float().mean()) if w.numel() else 0.0
    std_t, mean_t = torch.std_mean(w.detach().float())
    return float(std_t), float(mean_t)


def _unit_axis(v: WeightView, x: fx.Node) -> int | None:
    """Tensor dim of ``x`` (a layer's output or input) that holds that layer's units."""
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return val.dim() - 1 if v.weight.dim() == 2 else min(1, val.dim() - 1)


def _stats(g: _Graph, n: fx.Node, v: WeightView, tied: bool, std: float, mean: float) -> list[Finding]:
    w = v.weight
    out: list[Finding] = []
    if std == 0:
        return out  # exact constants are deliberate (zero convs, LoRA B) or caught by the symmetry check
    if w.numel() >= 32 and abs(mean) > MEAN_RATIO * std:
        out.append(Finding("nonzero-mean", "warning",
                           f"mean {mean:.3g} is {abs(mean) / std:.3g}x the std {std:.3g}: units start "
                           "correlated and outputs biased; use a zero-mean init (PyTorch's default, kaiming, xavier)",
                           param=v.weight_name, node=n.name, layer=g.label(n),
                           evidence={"mean": _f(mean), "std": _f(std), "ratio": _f(abs(mean) / std)}))
    if tied or g.normalised(n):
        return out
    fan_in, fan_out = v.fans()
    refs = {"pytorch_default": 1 / math.sqrt(3 * fan_in), "he_fan_in": math.sqrt(2 / fan_in),
            "he_fan_out": math.sqrt(2 / fan_out), "xavier": math.sqrt(2 / (fan_in + fan_out)),
            "normal_0.02": 0.02}
    lo, hi = min(refs.values()) / SCALE_FACTOR, max(refs.values()) * SCALE_FACTOR
    if std < lo or std > hi:
        word = "small" if std < lo else "large"
        out.append(Finding("scale", "warning",
                           f"std {std:.3g} is too {word} for fan_in {fan_in}, fan_out {fan_out} (usual inits "
                           f"give {min(refs.values()):.3g}..{max(refs.values()):.3g}) and no normalisation "
                           "follows; use nn.init.kaiming_normal_/xavier_uniform_ or add a norm layer",
                           param=v.weight_name, node=n.name, layer=g.label(n),
                           evidence={"std": _f(std), "fan_in": fan_in, "fan_out": fan_out,
                                     "refs": {k: _f(x) for k, x in refs.items()}, "range": [_f(lo), _f(hi)]}))
    return out


# ---------------------------------------------------------------------------
class _Probe(fx.Interpreter):
    """Records the output std of tracked nodes; ``locate=True`` finds the first NaN/Inf output."""

    def __init__(self, gm: fx.GraphModule, tracked: set[str], locate: bool = False) -> None:
        super().__init__(gm)
        self.tracked = tracked
        self.locate = locate
        self.stds: list[tuple[str, float, float]] = []  # node, input std (nan: not measured), output std
        self.nonfinite: str | None = None
        self.first: float | None = None

    def _set_current_node(self, node: fx.Node) -> Any:
        # fx.Interpreter copies each node's meta into torch.fx.traceback's process-wide current_meta
        # while a torch.export / make_fx trace (in another thread) preserves node meta, which would
        # rewrite that trace's module stacks; the probe reads no node meta (see rfscope.core.locks)
        return contextlib.nullcontext()

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if self.locate:
            if self.nonfinite is None and isinstance(out, torch.Tensor) and out.is_floating_point() \
                    and n.op != "get_attr" and not _finite(out):
                self.nonfinite = n.name
        elif n.op == "output":
            if not all(_finite(t) for t in _tensors(out) if t.is_floating_point()):
                self.nonfinite = n.name
        elif n.name in self.tracked and isinstance(out, torch.Tensor) and out.numel() > 1:
            s = float(out.float().std())
            if not math.isfinite(s):
                self.nonfinite = n.name
            xs = math.nan
            if self.first is None or s < self.first / SIGNAL_RATIO:  # is the input itself all zero?
                x = self.env.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
                xs = float(x.float().std()) if isinstance(x, torch.Tensor) and x.numel() > 1 else math.nan
            if self.first is None and xs != 0 and s > 0:
                self.first = s
            self.stds.append((n.name, xs, s))
        return out


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _random_inputs(example_inputs: Sequence[Any], gen: torch.Generator,
                   device: torch.device | None = None) -> tuple[Any, ...]:
    """Random inputs with the example's shapes and dtypes (drawn on the cpu, moved to ``device``)."""
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    grow = len(tensors) == 1 and tensors[0].dim() >= 2 and tensors[0].shape[0] == 1
    out: list[Any] = []
    for x in example_inputs:
        if not isinstance(x, torch.Tensor):
            out.append(x)
            continue
        shape = list(x.shape)
        if grow:
            shape[0] = 2  # BatchNorm on batch statistics needs more than one value per channel
        if x.is_floating_point():
            t = torch.randn(shape, generator=gen)
        elif x.dtype == torch.bool:
            t = torch.ones(shape, dtype=torch.bool)
        else:
            t = torch.randint(0, 2, shape, generator=gen, dtype=x.dtype)
        out.append(t.to(device) if device is not None else t)
    return tuple(out)


class _HookProbe:
    """Module forward hooks on the copy, for graphs that are not module-level (ATen) graphs."""

    def __init__(self, real: nn.Module, tracked: dict[str, str]) -> None:
        self.stds: list[tuple[str, float, float]] = []
        self.nonfinite: str | None = None
        self.first: float | None = None
        self.handles = [m.register_forward_hook(self._hook(tracked[p])) for p, m in real.named_modules()
                        if p in tracked]

    def _hook(self, name: str) -> Callable[..., None]:
        def h(mod: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.numel() <= 1:
                return
            s = float(out.float().std())
            if not math.isfinite(s) and self.nonfinite is None:
                self.nonfinite = name
            xs = math.nan
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.numel() > 1 and (self.first is None or s < self.first / SIGNAL_RATIO):
                xs = float(x.float().std())
            if self.first is None and xs != 0 and s > 0:
                self.first = s
            self.stds.append((name, xs, s))

        return h


def _private_copy(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(a deep copy of model without hooks, True)``; ``(model, False)`` when it cannot be copied
    (its weights are then only read, never run)."""
    from rfscope.trace.copy import clear_hooks

    try:
        return clear_hooks(copy.deepcopy(model)), True
    except Exception:  # noqa: BLE001 - e.g. a non-leaf tensor attribute refuses deepcopy
        return model, False


def _signal(model: nn.Module, g: _Graph, example_inputs: Sequence[Any], registry: Registry,
            leaf_modules: Iterable[str], seed: int, wstats: dict[int, tuple[float, float]],
            rules: InitRules, owned: bool = False) -> list[Finding]:
    """The random-input forward pass; ``owned``: ``model`` is already a private copy (run it)."""
    from rfscope.trace.copy import clear_hooks
    from rfscope.trace.symbolic import trace

    tracked = {n.name for n, v in g.views.items() if wstats.get(id(v.weight), (0.0, 0.0))[0] > 0}
    try:
        real = (model if owned else clear_hooks(copy.deepcopy(model))).float().eval()
        for m in real.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        gen = torch.Generator().manual_seed(seed)
        dev = next((t.device for t in [*real.parameters(), *real.buffers()]), None)
        inputs = _random_inputs(example_inputs, gen, dev)
        gm = None
        if g.report.trace_path == "symbolic_trace":
            try:
                gm = trace(real, registry, leaf_modules)
            except Exception:  # noqa: BLE001 - fall back to module hooks
                gm = None
        probe: _Probe | _HookProbe
        with torch.no_grad(), running():  # not while torch.export traces (rfscope.core.locks)
            if gm is not None:
                probe = _Probe(gm, tracked)
                probe.run(*inputs)
                if probe.nonfinite is not None:  # find where it starts
                    where = _Probe(gm, tracked, locate=True)
                    where.run(*inputs)
                    probe.nonfinite = where.nonfinite or probe.nonfinite
            else:
                paths = {}
                for path, m in model.named_modules():
                    w = getattr(m, "weight", None)
                    if path and rules.lookup_class(type(m)) is not None and isinstance(w, torch.Tensor) \
                            and w.dim() >= 2 and (wstats[id(w)] if id(w) in wstats else _std_mean(w))[0] > 0:
                        paths[path] = g.report.modules.get(path, path)
                probe = _HookProbe(real, paths)
                res = real(*inputs)
                if probe.nonfinite is None and not all(_finite(t) for t in _tensors(res) if t.is_floating_point()):
                    probe.nonfinite = "output"
    except Exception as e:  # noqa: BLE001 - the static checks stand without the forward pass
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [Finding("signal-skipped", "info", f"the random-input forward pass failed: {msg}",
                        evidence={"error": type(e).__name__})]
    def lab(name: str) -> str:
        rec = g.report.records.get(name)
        return rec.label if rec is not None else name

    out: list[Finding] = []
    if probe.nonfinite is not None:
        out.append(Finding("signal-nonfinite", "error",
                           "a forward pass on N(0,1) inputs produces NaN/Inf here; check the weights and the "
                           "ops' numerics (log/sqrt/div of a possibly zero value)",
                           node=probe.nonfinite, layer=lab(probe.nonfinite), evidence={"node": probe.nonfinite}))
    prof = [(name, s) for name, xs, s in probe.stds if math.isfinite(s) and not (xs == 0)]
    if len(prof) < 2 or prof[0][1] == 0:
        return out
    s0 = prof[0][1]
    profile = [[lab(name), _f(s)] for name, s in prof]
    hi = max(prof, key=lambda p: p[1])
    lo = min(prof, key=lambda p: p[1])
    for (name, s), check, bad in ((hi, "signal-exploding", hi[1] > SIGNAL_RATIO * s0),
                                  (lo, "signal-vanishing", lo[1] < s0 / SIGNAL_RATIO)):
        if not bad:
            continue
        depth = [p[0] for p in prof].index(name)
        verb = "grows" if check == "signal-exploding" else "shrinks"
        out.append(Finding(check, "warning",
                           f"activation std {verb} from {s0:.3g} at {lab(prof[0][0])!r} to {s:.3g} here ({depth} "
                           f"weighted layers deeper, ratio {s / s0:.3g}) on N(0,1) inputs; rescale the init "
                           "(He for ReLU, Xavier for tanh), add normalisation or residual scaling",
                           node=name, layer=lab(name),
                           evidence={"first": lab(prof[0][0]), "first_std": _f(s0), "std": _f(s),
                                     "ratio": _f(s / s0), "depth": depth, "profile": profile}))
    return out


# ---------------------------------------------------------------------------
@deep_entry  # a model nested thousands of levels deep runs where the stack has room
def check_init(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Sequence[Any] | None = None,
    report: Report | None = None,
    registry: Registry | None = None,
    rules: InitRules | None = None,
    leaf_modules: Iterable[str] = (),
    forward: bool = True,
    seed: int = 0,
) -> list[Finding]:
    """Check ``model``'s initial weights; returns :class:`Finding` s (errors first).

    ``input_shape``/``example_inputs`` as for :func:`rfscope.analyze` (or pass an
    existing ``report``; its findings are stored in ``report.findings``).
    ``forward=False`` skips the random-input forward pass.  The model is never
    modified: the forward pass runs on a float32 copy.

    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = [nn.init.constant_(p, 0.5) for p in net.parameters()]
    >>> [f.check for f in rfscope.check_init(net, input_shape=(1, 4), forward=False)]
    ['symmetric-units']
    """
    if not isinstance(model, nn.Module):
        raise InitCheckError(f"expected a torch.nn.Module, got {type(model).__name__}")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise InitCheckError(
            f"the init check needs real weights, but {len(meta)} tensors (e.g. {meta[0]!r}) are on the meta "
            "device; build the model on cpu or load a state_dict first")
    reg = registry if registry is not None else default_registry()
    rules = rules if rules is not None else default_init_rules()
    if report is None:
        from rfscope.pipeline import analyze

        # a module class with its own init rule is kept whole (a leaf), so the rule sees its calls
        leaf_modules = [*leaf_modules, *(p for p, m in model.named_modules()
                                         if p and rules.has_exact(type(m)) and not reg.has_module_class(type(m)))]
        if example_inputs is None and input_shape is not None and len(tuple(input_shape)) < 3:
            example_inputs = (torch.empty(tuple(int(s) for s in input_shape), device="meta"),)
        report = analyze(model, input_shape, example_inputs=example_inputs, registry=reg,
                         leaf_modules=leaf_modules)
    if example_inputs is None:
        example_inputs = (torch.empty(report.input_shape, device="meta"),)
    # weights are read from a private copy: reading a parametrized weight runs its parametrization,
    # which may update state (spectral_norm's power iteration in training mode)
    work, owned = _private_copy(model)
    g = _Graph(report, work, rules, reg)
    wstats: dict[int, tuple[float, float]] = {}
    for v in g.views.values():
        if id(v.weight) not in wstats:
            wstats[id(v.weight)] = _std_mean(v.weight)
    findings = _nonfinite(work, g.names, wstats)
    bad = {f.param for f in findings}
    users: dict[int, set[Any]] = {}
    for n, v in g.views.items():
        users.setdefault(id(v.weight), set()).add(type(g.modules[n]) if n in g.modules else n.target)
    for n in g.gm.graph.nodes:  # other modules holding the same weight (an Embedding tied to a head)
        m = g.modules.get(n)
        if m is not None and n not in g.views:
            for t in m.parameters():
                if id(t) in users:
                    users[id(t)].add(type(m))
    done: set[int] = set()
    for n, v in g.views.items():
        if id(v.weight) in done or v.weight_name in bad or not v.weight.requires_grad:
            continue  # checked once; frozen weights (a pretrained base) are not an init
        done.add(id(v.weight))
        dead_f, dead = _dead(g, n, v)
        findings += dead_f
        findings += _symmetry(g, n, v, dead)
        findings += _stats(g, n, v, len(users.get(id(v.weight), ())) > 1, *wstats[id(v.weight)])
    if forward and not any(f.check == "nonfinite" for f in findings):
        with keep_rng_state():  # the forward may draw from the global generator (noise)
            findings += _signal(work, g, example_inputs, reg, leaf_modules, seed, wstats, rules, owned)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order.get(f.severity, 3))
    report.extras["findings"] = findings
    report.extras.setdefault("top_level", {})["findings"] = [f.to_dict() for f in findings]
    return findings
