"""The initialisation check, a pass over the analysis: symmetry, dead units, mean/scale, signal, NaN/Inf.

The check reads the user's *real* weights (never modifying them) and the graph that
:func:`rfscope.analyze` traced, so it knows what consumes every layer.  It keeps no table of
ops: which calls hold weights, and how, is each plugin's ``init_view``
(:mod:`rfscope.core.initview`: Linear/``F.linear``, Conv1-3d/``F.conv*``,
ConvTranspose1-3d/``F.conv_transpose*`` and their ATen forms are built in), and what an op does
to units (ReLU-like, channelwise, a normalisation, a flatten) is its record's traits
(:mod:`rfscope.core.traits`).  Calls without a view only get the NaN/Inf check (norm layers,
embeddings, LayerScale gammas: their zeros and constants are legitimate), and so do frozen
weights (``requires_grad=False``: a pretrained base is not an initialisation); both still
take part in the forward pass.

Modules: :mod:`.findings` (:class:`Finding`, thresholds), :mod:`.graph` (dataflow of units),
:mod:`.checks` (the static checks), :mod:`.signal` (the random-input forward pass).
:func:`rfscope.check_init` analyses a model and runs :func:`check`.

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
  ReLU-like activations (through BatchNorm with beta <= 0): output and gradient 0.
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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch.fx as fx
import torch.nn as nn

from rfscope.core.registry import Registry, default_registry
from rfscope.passes.initcheck.checks import dead, nonfinite, stats, std_mean, symmetry
from rfscope.passes.initcheck.findings import Finding, InitCheckError
from rfscope.passes.initcheck.graph import UnitGraph
from rfscope.passes.initcheck.signal import private_copy, signal
from rfscope.trace.runtime import keep_rng_state

__all__ = ["Finding", "InitCheckError", "check", "require_real_weights"]


def require_real_weights(model: Any) -> None:
    """Raise unless ``model`` is a module whose parameters and buffers hold real values.

    Raises
    ------
    InitCheckError
        ``model`` is not a :class:`torch.nn.Module`, or some of its tensors are on the meta device.
    """
    if not isinstance(model, nn.Module):
        raise InitCheckError(f"expected a torch.nn.Module, got {type(model).__name__}")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise InitCheckError(
            f"the init check needs real weights, but {len(meta)} tensors (e.g. {meta[0]!r}) are on the meta "
            "device; build the model on cpu or load a state_dict first")


def check(
    records: Mapping[str, Any],
    gm: fx.GraphModule,
    model: nn.Module,
    example_inputs: Sequence[Any],
    *,
    registry: Registry | None = None,
    modules: Mapping[str, str] | None = None,
    trace_path: str = "symbolic_trace",
    leaf_modules: Iterable[str] = (),
    forward: bool = True,
    seed: int = 0,
) -> list[Finding]:
    """Check ``model``'s initial weights against its analysed graph; returns :class:`Finding` s (errors first).

    Parameters
    ----------
    records, gm
        The analysis of ``model`` (``report.records``, ``report.gm``): node records with the
        plugins' traits, and the traced graph.
    model
        The user's model, with real weights; it is never modified (weights are read from a
        private copy, the forward pass runs on a float32 copy).
    example_inputs
        One value per ``forward`` argument (only shapes and dtypes are used).
    registry
        The registry the analysis used (its plugins' ``init_view`` name the weighted calls).
    modules, trace_path, leaf_modules
        ``report.modules``, ``report.trace_path`` and the analysis's leaf modules: the forward
        pass traces the copy again the same way, or hooks its modules.
    forward
        ``False`` skips the random-input forward pass.
    seed
        Seed of the forward pass's inputs.

    Returns
    -------
    list[Finding]
        Errors first, then warnings, then infos.

    Raises
    ------
    InitCheckError
        ``model`` is not a module, or its weights are on the meta device.

    Examples
    --------
    >>> import torch, torch.nn as nn, rfscope
    >>> from rfscope.passes.initcheck import check
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = [nn.init.constant_(p, 0.5) for p in net.parameters()]
    >>> x = torch.randn(2, 4)
    >>> r = rfscope.analyze(net, example_inputs=(x,))
    >>> [f.check for f in check(r.records, r.gm, net, (x,), forward=False)]
    ['symmetric-units']
    """
    require_real_weights(model)
    reg = registry if registry is not None else default_registry()
    # weights are read from a private copy: reading a parametrized weight runs its parametrization,
    # which may update state (spectral_norm's power iteration in training mode)
    work, owned = private_copy(model)
    g = UnitGraph(records, gm, work, reg)
    wstats: dict[int, tuple[float, float]] = {}
    for v in g.views.values():
        if id(v.weight) not in wstats:
            wstats[id(v.weight)] = std_mean(v.weight)
    findings = nonfinite(work, g.names, wstats)
    bad = {f.param for f in findings}
    users: dict[int, set[Any]] = {}
    for n, v in g.views.items():
        users.setdefault(id(v.weight), set()).add(type(g.modules[n]) if n in g.modules else n.target)
    for n in gm.graph.nodes:  # other modules holding the same weight (an Embedding tied to a head)
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
        dead_f, gone = dead(g, n, v)
        findings += dead_f
        findings += symmetry(g, n, v, gone)
        findings += stats(g, n, v, len(users.get(id(v.weight), ())) > 1, *wstats[id(v.weight)])
    if forward and not any(f.check == "nonfinite" for f in findings):
        with keep_rng_state():  # the forward may draw from the global generator (noise)
            findings += signal(work, g, example_inputs, reg, leaf_modules, seed, wstats, owned, trace_path, modules)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order.get(f.severity, 3))
    return findings
