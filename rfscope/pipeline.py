"""``rfscope.analyze``: trace, propagate shapes, run the plugins, build the report."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from rfscope.core.errors import RfscopeError, TraceError
from rfscope.core.registry import Plugin, Registry, default_registry
from rfscope.core.state import TensorRF
from rfscope.passes.counts import count
from rfscope.passes.diagnostics import diagnose
from rfscope.passes.initcheck import Finding, check, require_real_weights
from rfscope.passes.interpret import build_graph, run_plugins
from rfscope.report import Report
from rfscope.trace.copy import named_modules, structural_copy
from rfscope.trace.runtime import call_deep, deep_tree
from rfscope.trace.shapes import explain_shape_error, propagate_shapes
from rfscope.trace.strategy import (
    PATH_NAMES,
    fallback_paths,
    graph_differs,
    real_outputs,
    tests_tensor_types,
    trace_model,
)

__all__ = ["analyze", "AnalysisInputError", "check_init"]


class AnalysisInputError(RfscopeError, ValueError):
    """The arguments to :func:`analyze` are malformed."""


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as e:
        raise AnalysisInputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from e
    if len(shape) < 3:
        raise AnalysisInputError(
            f"input_shape {shape} needs at least 3 dims (N, C, *spatial), e.g. (1, 3, 224, 224)"
        )
    if any(s <= 0 for s in shape):
        raise AnalysisInputError(f"input_shape {shape} has a zero or negative size")
    return shape


def _check_materialised(model: torch.nn.Module) -> None:
    """Lazy layers (``nn.LazyConv2d``...) have no shapes until a first forward pass fills them in."""
    lazy = [(name, type(m).__name__) for name, m in named_modules(model)
            if any(p is not None and is_lazy(p)
                   for p in (*m._parameters.values(), *m._buffers.values()))]
    if lazy:
        where = ", ".join(f"{n or 'the model'!r} ({c})" for n, c in lazy[:3]) + (" ..." if len(lazy) > 3 else "")
        raise AnalysisInputError(
            f"the model has lazy layers whose parameters are not created yet: {where}; run one forward "
            "pass on an input of the right shape first (model(torch.zeros(N, C, H, W))), then analyse it"
        )


def _shapes(gm: Any, example_inputs: Sequence[Any]) -> None:
    try:
        propagate_shapes(gm, example_inputs)
    except TraceError as e:
        raise explain_shape_error(gm, example_inputs, e) from e


def _type_tested(gm: Any, model: torch.nn.Module, example_inputs: Sequence[Any],
                 leaves: list[str]) -> tuple[Any, str, str | None]:
    """A forward that tests ``isinstance(x, Tensor)`` is False for fx's Proxy and may take another
    branch under fx (with the same shapes, so nothing else shows it): use the ATen tracers, which
    run the model's code on tensors.  When both fail, the symbolic graph is kept only if its outputs
    match the model's own (one forward on meta)."""
    why = ("a forward tests isinstance(..., Tensor), which is False for torch.fx's Proxy: the symbolic graph "
           "may follow another branch than the model")
    try:
        gm2, path, why2 = fallback_paths(model, example_inputs, why, leaves)
    except TraceError as e:
        diff = graph_differs(gm, model, example_inputs)
        if diff is not None:
            raise TraceError(f"{diff}: torch.fx traced another program than the model's, and {e}") from e
        return gm, PATH_NAMES["symbolic_trace"], (f"kept symbolic_trace although {why}: torch.export and make_fx "
                                                  "failed, and the graph's outputs match the model's")
    _shapes(gm2, example_inputs)
    return gm2, path, why2


def _model_runs(model: torch.nn.Module, example_inputs: Sequence[Any]) -> bool:
    """The model itself runs on the example inputs (on a meta copy)."""
    try:
        real_outputs(model, example_inputs)
    except Exception:  # noqa: BLE001 - any failure: it does not (or not on meta)
        return False
    return True


def analyze(
    model: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Sequence[Any] | None = None,
    strict: bool = False,
    registry: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    check_init: bool = False,
    trace: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    plugins: Iterable[Plugin] = (),
) -> Report:
    """Trace ``model`` and compute the receptive field of every node.

    Give either ``input_shape`` (``(N, C, *spatial)``) or ``example_inputs`` (a
    tuple of tensors, one per ``forward`` argument; only their shapes and dtypes
    are used).  The model is analysed on a copy of its module tree in eval mode
    (shapes on meta) and is never modified.  ``strict=True`` raises on any op without a plugin.
    ``check_init=True`` also runs :func:`rfscope.check_init` (needs real weights)
    and stores its findings in ``report.findings``.
    ``trace``: ``"auto"`` (``symbolic_trace``, then ``torch.export``, then ``make_fx``
    on the example input; see :mod:`rfscope.trace.strategy`), or one of ``"symbolic_trace"``,
    ``"export"``, ``"make_fx"`` to force a path; ``report.trace_path`` says which was used.
    ``weights``: a state-dict checkpoint loaded (``weights_only=True``) into a copy of the
    model first (:func:`rfscope.weights.load_weights`).
    ``plugins``: :class:`~rfscope.Plugin` s for this analysis only, replacing the registry's
    plugins for their targets (:meth:`Registry.with_overrides`); the registry is not changed.

    Raises
    ------
    AnalysisInputError
        ``model`` is not a module, the input shape is malformed, or the model has lazy layers.
    TraceError
        No tracer could follow the model, or its shapes could not be propagated (the message
        names the layer and the fix).
    StrictError
        ``strict=True`` and some node has no plugin or its plugin refused the call.
    PluginError
        A plugin raised (``strict=True``), or ``plugins`` holds a malformed plugin.
    WeightsError
        The ``weights`` checkpoint is missing, corrupt or does not fit the model.

    Examples
    --------
    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3))
    >>> rfscope.analyze(net, input_shape=(1, 3, 32, 32)).rf("3").size
    (8, 8)
    """
    if not isinstance(model, torch.nn.Module):
        raise AnalysisInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    depth = deep_tree(model)
    if depth:  # modules nested hundreds of levels deep: run where the stack has room for them
        return call_deep(depth, analyze, model, input_shape, example_inputs=example_inputs, strict=strict,
                         registry=registry, leaf_modules=leaf_modules, check_init=check_init, trace=trace,
                         weights=weights, plugins=plugins)
    if example_inputs is None:
        if input_shape is None:
            raise AnalysisInputError("give input_shape=(N, C, H, W) or example_inputs=(tensor, ...)")
        shape = _check_shape(input_shape)
        example_inputs = (torch.empty(shape, device="meta"),)
    else:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        first = next((x for x in example_inputs if isinstance(x, torch.Tensor)), None)
        if first is None:
            raise AnalysisInputError("example_inputs holds no tensor")
        shape = _check_shape(first.shape) if first.dim() >= 3 else tuple(first.shape)
    if weights is not None:
        from rfscope.weights import load_weights

        model = load_weights(model, weights)
    _check_materialised(model)
    reg = registry if registry is not None else default_registry()
    plugins = list(plugins)
    reg = reg.with_overrides(plugins) if plugins else reg
    reg.ensure_loaded()
    copy = structural_copy(model)
    gm, trace_path, trace_why = trace_model(model, reg, example_inputs, leaf_modules, trace, copy=copy)
    symbolic_auto = trace == "auto" and trace_path == PATH_NAMES["symbolic_trace"]
    try:
        propagate_shapes(gm, example_inputs)
    except TraceError as e:
        if not (symbolic_auto and _model_runs(model, example_inputs)):
            raise explain_shape_error(gm, example_inputs, e) from e
        # the model runs on this input but its symbolic graph does not: fx traced another program
        why = (f"the symbolic graph fails where the model runs ({str(e).splitlines()[0]}): torch.fx traced "
               "another program than the model's")
        gm, trace_path, trace_why = fallback_paths(model, example_inputs, why, list(leaf_modules))
        _shapes(gm, example_inputs)
    else:
        if symbolic_auto and tests_tensor_types(model):
            gm, trace_path, trace_why = _type_tested(gm, model, example_inputs, list(leaf_modules))
    input_size = tuple(shape[2:]) if len(shape) >= 3 else ()
    records, unsupported, errors = run_plugins(gm, reg, input_size, strict=strict)
    modules: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if not isinstance(n.meta.get("val"), torch.Tensor):
            continue
        # a node that does not depend on the input (batch-norm statistics in ATen graphs) never
        # replaces one that does as the module's output
        depends = isinstance(records[n.name].state, TensorRF)
        for key in (n.meta.get("nn_module_stack") or {}):
            if depends or key not in modules or not isinstance(records[modules[key]].state, TensorRF):
                modules[key] = n.name
        if n.op == "call_module":
            modules.setdefault(str(n.target), n.name)
    graph = build_graph(records)
    warnings, check_errors = diagnose(records, graph, input_size)
    report = Report(tuple(shape), records, modules, graph, gm, count(records, gm, copy), unsupported,
                    errors + check_errors, trace_path=trace_path, trace_fallback=trace_why, warnings=warnings)
    if check_init:
        report.findings = check(records, gm, model, example_inputs, registry=reg, modules=modules,
                                trace_path=trace_path, leaf_modules=leaf_modules)
    return report


def check_init(
    model: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Sequence[Any] | None = None,
    report: Report | None = None,
    registry: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    forward: bool = True,
    seed: int = 0,
) -> list[Finding]:
    """Check ``model``'s initial weights: analyse it, then run the init-check pass
    (:func:`rfscope.passes.initcheck.check`); returns :class:`~rfscope.Finding` s (errors first).

    ``input_shape``/``example_inputs`` as for :func:`analyze` (``input_shape`` may also be
    ``(N, features)``), or pass an existing ``report`` of this model (its ``findings`` are set).
    ``forward=False`` skips the random-input forward pass.  The model is never modified:
    the forward pass runs on a float32 copy.

    Raises
    ------
    InitCheckError
        ``model`` is not a module, or its weights are on the meta device.
    AnalysisInputError, TraceError
        As :func:`analyze`, when no ``report`` is given.

    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = [nn.init.constant_(p, 0.5) for p in net.parameters()]
    >>> [f.check for f in rfscope.check_init(net, input_shape=(1, 4), forward=False)]
    ['symmetric-units']
    """
    depth = deep_tree(model) if isinstance(model, torch.nn.Module) else 0
    if depth:  # a model nested thousands of levels deep runs where the stack has room
        return call_deep(depth, check_init, model, input_shape, example_inputs=example_inputs, report=report,
                         registry=registry, leaf_modules=leaf_modules, forward=forward, seed=seed)
    require_real_weights(model)
    reg = registry if registry is not None else default_registry()
    leaf_modules = list(leaf_modules)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if report is None:
        if example_inputs is None and input_shape is not None and len(tuple(input_shape)) < 3:
            example_inputs = (torch.empty(tuple(int(s) for s in input_shape), device="meta"),)
        report = analyze(model, input_shape, example_inputs=example_inputs, registry=reg, leaf_modules=leaf_modules)
    if example_inputs is None:
        example_inputs = (torch.empty(report.input_shape, device="meta"),)
    findings = check(report.records, report.gm, model, example_inputs, registry=reg, modules=report.modules,
                     trace_path=report.trace_path, leaf_modules=leaf_modules, forward=forward, seed=seed)
    report.findings = findings
    return findings
