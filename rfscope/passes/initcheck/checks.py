"""The static checks of one weighted call: NaN/Inf, dead units, symmetric/duplicate units, mean and scale.

Each reads the call's real weights (:class:`~rfscope.core.initview.WeightView`) and where its
units go (:class:`~rfscope.passes.initcheck.graph.UnitGraph`); see the package docstring for
what each finding means.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn as nn

from rfscope.core.initview import WeightView
from rfscope.core.traits import BATCHNORM
from rfscope.passes.initcheck.findings import MEAN_RATIO, SCALE_FACTOR, Finding, rounded
from rfscope.passes.initcheck.graph import UnitGraph, unit_axis

__all__ = ["nonfinite", "finite", "dead", "symmetry", "std_mean", "stats"]

_f = rounded


def nonfinite(model: nn.Module, names: dict[int, str], wstats: dict[int, tuple[float, float]]) -> list[Finding]:
    """``nonfinite``: every floating parameter or buffer holding NaN/Inf (``wstats``: known (std, mean))."""
    found = []
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        d = t.detach()
        if math.isfinite(wstats.get(id(t), (math.nan, 0.0))[0]) or finite(d):
            continue
        nan, inf = int(torch.isnan(d).sum()), int(torch.isinf(d).sum())
        if nan or inf:
            name = names.get(id(t), "?")
            found.append(Finding("nonfinite", "error", f"{nan} NaN and {inf} Inf values of {d.numel()}; "
                                 "re-initialise it (NaN/Inf propagate to every output)",
                                 param=name, evidence={"nan": nan, "inf": inf, "numel": d.numel()}))
    return found


def finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``."""
    return bool(torch.isfinite(t.detach()).all())


def dead(g: UnitGraph, n: fx.Node, v: WeightView) -> tuple[list[Finding], torch.Tensor]:
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
    bns = [g.modules[u] for e in ends for u in e.via if BATCHNORM in g.traits(u) and u in g.modules]
    if bns:  # a constant channel leaves BatchNorm (batch statistics) as beta
        gone = zero.clone()
        for m in bns:
            beta = getattr(m, "bias", None)
            if isinstance(beta, torch.Tensor):
                gone &= beta.detach().float() <= 0
    else:
        b = v.bias.detach().float() if v.bias is not None else torch.zeros(len(zero))
        gone = zero & (b <= 0)
    idx = torch.nonzero(gone).flatten()
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


def symmetry(g: UnitGraph, n: fx.Node, v: WeightView, dead: torch.Tensor) -> list[Finding]:
    """``symmetric-units`` / ``duplicate-units``: units equal in and out (``dead`` ones left out)."""
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
    axis = unit_axis(v, n)
    if axis is None or any(unit_axis(g.views[e.node], e.node.args[0]) != axis for e in ends
                           if isinstance(e.node.args[0], fx.Node)):
        return []  # the consumer mixes another dim of the tensor than the one holding the units
    same: list[torch.Tensor] = []
    for units in groups:
        ok = True
        for e in ends:
            cols = g.views[e.node].columns(e.spread)
            if cols is None or cols.shape[0] != n_out or not g.params_same(e.via, units):
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



def std_mean(w: torch.Tensor) -> tuple[float, float]:
    """``(std, mean)`` of a weight as floats (std 0 for fewer than two elements)."""
    if w.numel() < 2:
        return 0.0, float(w.detach().float().mean()) if w.numel() else 0.0
    std_t, mean_t = torch.std_mean(w.detach().float())
    return float(std_t), float(mean_t)


def stats(g: UnitGraph, n: fx.Node, v: WeightView, tied: bool, std: float, mean: float) -> list[Finding]:
    """``nonzero-mean`` and ``scale`` (not for weights ``tied`` to another kind of layer, nor before a norm)."""
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


