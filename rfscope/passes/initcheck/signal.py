"""The data-free forward pass of the initialisation check: activation scale across depth, and NaN/Inf.

A float32 copy of the model (eval mode, but BatchNorm on batch statistics as in training) runs
on N(0,1) inputs shaped like the example inputs; the output std of every weighted call is
recorded, either by an fx interpreter over a fresh symbolic trace or, for ATen graphs, by
forward hooks on the weighted modules.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from rfscope.core.locks import running
from rfscope.core.registry import Registry
from rfscope.passes.initcheck.checks import finite as _finite
from rfscope.passes.initcheck.checks import std_mean as _std_mean
from rfscope.passes.initcheck.findings import SIGNAL_RATIO, Finding, rounded
from rfscope.passes.initcheck.graph import UnitGraph, view_of_class

__all__ = ["signal", "private_copy"]

_f = rounded


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



def private_copy(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(a deep copy of model without hooks, True)``; ``(model, False)`` when it cannot be copied
    (its weights are then only read, never run)."""
    from rfscope.trace.copy import clear_hooks

    try:
        return clear_hooks(copy.deepcopy(model)), True
    except Exception:  # noqa: BLE001 - e.g. a non-leaf tensor attribute refuses deepcopy
        return model, False


def signal(model: nn.Module, g: UnitGraph, example_inputs: Sequence[Any], registry: Registry,
           leaf_modules: Iterable[str], seed: int, wstats: dict[int, tuple[float, float]],
           owned: bool = False, trace_path: str = "symbolic_trace",
           modules: Mapping[str, str] | None = None) -> list[Finding]:
    """The random-input forward pass: ``signal-exploding``/``-vanishing``, ``signal-nonfinite``, ``signal-skipped``.

    ``owned``: ``model`` is already a private copy (run it).  ``trace_path``: how the analysed
    graph was traced (a symbolic graph is traced again on the copy; other graphs use module
    hooks); ``modules``: module path -> node name, to label the hooked modules.
    """
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
        if trace_path == "symbolic_trace":
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
                    if path and view_of_class(registry, type(m)) is not None and isinstance(w, torch.Tensor) \
                            and w.dim() >= 2 and (wstats[id(w)] if id(w) in wstats else _std_mean(w))[0] > 0:
                        paths[path] = (modules or {}).get(path, path)
                probe = _HookProbe(real, paths)
                res = real(*inputs)
                if probe.nonfinite is None and not all(_finite(t) for t in _tensors(res) if t.is_floating_point()):
                    probe.nonfinite = "output"
    except Exception as e:  # noqa: BLE001 - the static checks stand without the forward pass
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [Finding("signal-skipped", "info", f"the random-input forward pass failed: {msg}",
                        evidence={"error": type(e).__name__})]
    lab = g.label

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


