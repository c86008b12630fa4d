"""``rfscope.analyze``: trace, propagate shapes, run the plugins, build the report."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from rfscope.core.errors import RfscopeError, TraceError
from rfscope.core.registry import Plugin, Registry, default_registry
from rfscope.core.state import CONST, TensorRF, input_rf, unknown
from rfscope.passes.counts import count
from rfscope.passes.diagnostics import diagnose
from rfscope.passes.initcheck import Finding, check, require_real_weights
from rfscope.passes.interpret import build_graph, run_plugins
from rfscope.report import Report
from rfscope.trace.copy import named_modules, structural_copy
from rfscope.trace.datadep import REAL_SHAPES
from rfscope.trace.runtime import deep_entry
from rfscope.trace.shapes import explain_shape_error, propagate_shapes
from rfscope.trace.strategy import (
    PATH_NAMES,
    fallback_paths,
    graph_differs,
    real_outputs,
    tests_tensor_types,
    trace_model,
)
from rfscope.trace.symbolic import FIRST_OUTPUTS

__all__ = ["analyze", "AnalysisInputError", "check_init", "Layout", "parse_layout", "infer_layout"]


class AnalysisInputError(RfscopeError, ValueError):
    """The arguments to :func:`analyze` are malformed."""


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)):
        raise AnalysisInputError(f"input_shape must be a sequence of ints, got {input_shape!r}")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as e:
        raise AnalysisInputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from e
    if not shape:
        raise AnalysisInputError("input_shape () has no dims; give (N, C, *spatial), e.g. (1, 3, 224, 224)")
    if any(s <= 0 for s in shape):
        raise AnalysisInputError(f"input_shape {shape} has a zero or negative size")
    return shape


# -- input layouts ---------------------------------------------------------------------------

#: positional (spatial) letters of a layout; ``D`` is depth only in a layout with a ``C``
_POSITIONAL = "HWDTL"
_LETTERS = "NC" + _POSITIONAL
#: inferred names of 1..5 positional dims after ``N C``
_INFERRED = ("L", "HW", "DHW", "TDHW", "LTDHW")


@dataclass(frozen=True)
class Layout:
    """What each dim of one input tensor is: ``dims`` holds, per dim, ``"N"``, ``"C"`` (channels or
    features) or the name of the positional axis it indexes (a letter); ``text`` is the layout as
    written (``"NHWC"``), ``None`` when it has no letters (an inferred layout with more than five
    positional dims)."""

    dims: tuple[str, ...]
    text: str | None
    inferred: bool = False

    @property
    def positional(self) -> tuple[str, ...]:
        """The positional axes, in the order of the tensor's dims."""
        return tuple(d for d in self.dims if d not in ("N", "C"))


def parse_layout(text: Any, shape: Sequence[int], what: str = "the input") -> Layout:
    """Check a layout string against the input's shape (``AnalysisInputError`` on any problem).

    >>> parse_layout("NHWC", (1, 32, 32, 3)).positional, parse_layout("ND", (1, 32)).positional
    (('H', 'W'), ())
    """
    if not isinstance(text, str):
        raise AnalysisInputError(f"layout for {what} must be a string of letters such as 'NCHW', got {text!r}")
    up = text.strip().upper()
    bad = sorted({c for c in up if c not in _LETTERS})
    if not up or bad:
        raise AnalysisInputError(
            f"layout {text!r} for {what}: {'it is empty' if not up else 'unknown letter ' + ', '.join(map(repr, bad))}"
            f"; use N (batch), C (channels/features) and one of H W D T L per positional axis, e.g. NCHW, NHWC, "
            "NCT, NT, NL, ND")
    twice = sorted({c for c in up if up.count(c) > 1})
    if twice:
        raise AnalysisInputError(f"layout {text!r} for {what} has {' and '.join(f'two {c}s' for c in twice)}: "
                                 "each letter names one dim")
    shape = tuple(shape)
    if "N" not in up:
        raise AnalysisInputError(f"layout {text!r} for {what} has no N: rfscope analyses batched inputs; add a "
                                 f"batch dim of 1 (shape {(1, *shape)}, layout {'N' + up!r})")
    if len(up) != len(shape):
        hint = ""
        if len(up) == len(shape) + 1 and up[0] == "N":
            hint = f"; is the batch dim missing? with it the shape is {(1, *shape)}"
        raise AnalysisInputError(f"layout {text!r} for {what} has {len(up)} letters but the input has "
                                 f"{len(shape)} dims (shape {shape}){hint}")
    if "C" not in up:  # (N, D) and (N, L, D): D is the feature dim, as that notation has it
        up_dims = tuple("C" if c == "D" else c for c in up)
    else:
        up_dims = tuple(up)
    return Layout(up_dims, up)


def infer_layout(x: torch.Tensor) -> Layout:
    """The default layout of an input tensor (README, 'Python API'): 3 dims or more ``N C *spatial``;
    2 dims ``NL`` (token ids) when integer or boolean, else ``ND`` (a feature vector); 1 dim ``N``."""
    nd = x.dim()
    if nd >= 3:
        k = nd - 2
        names = tuple(_INFERRED[k - 1]) if k <= len(_INFERRED) else tuple(f"axis {i}" for i in range(k))
        text = "NC" + "".join(names) if k <= len(_INFERRED) else None
        return Layout(("N", "C", *names), text, True)
    if nd == 2:
        if x.is_floating_point() or x.is_complex():
            return Layout(("N", "C"), "ND", True)
        return Layout(("N", "L"), "NL", True)
    if nd == 1:
        return Layout(("N",), "N", True)
    return Layout((), "", True)


def _layouts(layout: Any, inputs: Sequence[Any], names: Sequence[str]) -> list[Layout | None]:
    """One layout per positional input (``None`` for a non-tensor), declared or inferred."""
    n = len(inputs)
    if layout is None:
        given: list[Any] = [None] * n
    elif isinstance(layout, str):
        tensors = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        if len(tensors) > 1:
            raise AnalysisInputError(f"layout {layout!r} is one string but there are {len(tensors)} input tensors; "
                                     "give one layout per input, e.g. layout=('NCHW', 'NL') (None: inferred)")
        given = [layout if i in tensors else None for i in range(n)]
        if not tensors:
            given = [layout] + [None] * (n - 1)
    elif isinstance(layout, dict):
        unknown_names = [k for k in layout if k not in names]
        if unknown_names:
            raise AnalysisInputError(f"layout names {unknown_names[0]!r}, which is not an input "
                                     f"(the inputs are {', '.join(names) or 'none'})")
        given = [layout.get(nm) for nm in names]
    elif isinstance(layout, (tuple, list)):
        if len(layout) != n:
            raise AnalysisInputError(f"layout has {len(layout)} entries but there are {n} inputs; give one per "
                                     "input (None: inferred)")
        given = list(layout)
    else:
        raise AnalysisInputError(f"layout must be a string such as 'NCHW', or one per input; got {layout!r}")
    out: list[Layout | None] = []
    for x, lay, nm in zip(inputs, given, names, strict=True):
        what = f"input {nm!r}"
        if not isinstance(x, torch.Tensor):
            if lay is not None:
                raise AnalysisInputError(f"layout {lay!r} is given for {what}, which is not a tensor "
                                         f"({type(x).__name__})")
            out.append(None)
        else:
            out.append(infer_layout(x) if lay is None else parse_layout(lay, tuple(x.shape), what))
    return out


def _input_states(inputs: Sequence[Any], layouts: Sequence[Layout | None],
                  names: Sequence[str]) -> tuple[list[Any], int | None]:
    """Each input's state, and the index of the primary input: the first tensor with a positional
    axis, whose positional axes (in its layout's order) are the input axes of every RF.  Another
    input indexes the same axes when it has the same positional letters and extents; one with no
    positional axis (a feature vector) sees no position; any other is unknown, with the reason."""
    primary = next((i for i, lay in enumerate(layouts) if lay is not None and lay.positional), None)
    axes: tuple[str, ...] = ()
    extent: dict[str, int] = {}
    main = _main_input(inputs, layouts, primary)
    if main is not None and main[1].positional:  # a tensor, or the first image of a list of images
        axes = main[1].positional
        extent = {d: int(s) for d, s in zip(main[1].dims, main[0].shape, strict=True)}
    states: list[Any] = []
    for x, lay, nm in zip(inputs, layouts, names, strict=True):
        if lay is None:
            states.append(_nested_states(x, axes, extent))
            continue
        states.append(_tensor_state(x, lay, axes, extent, nm, names[primary] if primary is not None else ""))
    return states, primary


def _tensor_state(x: torch.Tensor, lay: Layout, axes: tuple[str, ...], extent: dict[str, int], nm: str,
                  primary: str) -> Any:
    pos = lay.positional
    if not pos:
        return input_rf(x.dim(), 0, [None] * x.dim())
    mine = {d: int(s) for d, s in zip(lay.dims, x.shape, strict=True)}
    if set(pos) != set(axes) or any(mine[d] != extent[d] for d in pos):
        why = (f"input {nm!r} has positional axes {', '.join(f'{d}={mine[d]}' for d in pos)}, the first input "
               f"{primary!r} {', '.join(f'{d}={extent[d]}' for d in axes)}: RFs are measured along the first "
               "input's axes only")
        return unknown([None] * x.dim(), why)
    return input_rf(x.dim(), len(axes), [axes.index(d) if d in axes else None for d in lay.dims])


def _nested_states(x: Any, axes: tuple[str, ...], extent: dict[str, int]) -> Any:
    """A list or tuple input: each tensor in it with its inferred layout; anything else a constant."""
    if isinstance(x, (list, tuple)):
        return tuple(_nested_states(v, axes, extent) for v in x)
    if isinstance(x, torch.Tensor):
        return _tensor_state(x, _element_layout(x), axes, extent, "in a list", "")
    return CONST


def _element_layout(x: torch.Tensor) -> Layout:
    """The layout of a tensor in a list input: a 3-D one is an image ``(C, H, W)`` (a list of images, as
    torchvision's detectors take); any other has its inferred layout (:func:`infer_layout`)."""
    if x.dim() == 3:
        return Layout(("C", "H", "W"), "CHW", True)
    return infer_layout(x)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        return next((t for t in map(_first_tensor, x) if t is not None), None)
    return None


def _main_input(inputs: Sequence[Any], layouts: Sequence[Layout | None],
                primary: int | None) -> tuple[torch.Tensor, Layout] | None:
    """The tensor whose positional axes are the input axes, and its layout: the primary input, else the
    first tensor input, else the first tensor of a list input (with :func:`_element_layout`)."""
    if primary is not None:
        lay = layouts[primary]
        assert lay is not None
        return inputs[primary], lay
    for x, lay in zip(inputs, layouts, strict=True):
        if lay is not None and isinstance(x, torch.Tensor):
            return x, lay
    for x in inputs:
        t = _first_tensor(x)
        if t is not None:
            return t, _element_layout(t)
    return None


def _flat_states(inputs: Sequence[Any], states: Sequence[Any]) -> list[Any]:
    """Per pytree leaf of the inputs, its state: what the ATen tracers make placeholders of."""
    from torch.utils._pytree import tree_flatten

    out: list[Any] = []
    for x, st in zip(inputs, states, strict=True):
        if isinstance(x, torch.Tensor):
            out.append(st)
            continue
        leaves, _ = tree_flatten(x)
        sts, _ = tree_flatten(st, is_leaf=lambda v: not isinstance(v, (tuple, list)))
        out.extend(sts if len(sts) == len(leaves) else [CONST] * len(leaves))
    return out


def _arg_names(model: torch.nn.Module, n: int) -> list[str]:
    """Names of the first ``n`` positional arguments of ``model.forward`` (``#i`` where there is none)."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"#{i}" for i in range(n)]


def _positional(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], list[str]]:
    """Keyword inputs as the positional arguments of ``model.forward``: each parameter up to the last
    one given takes its value, or its default."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError) as e:
        raise AnalysisInputError(f"example_inputs is a dict, but the forward's signature cannot be read: {e}") from e
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    known = {p.name for p in positional}
    for k in inputs:
        if k not in known:
            names = ", ".join(p.name for p in positional)
            raise AnalysisInputError(f"example_inputs names {k!r}, which is not a positional parameter of "
                                     f"{type(model).__name__}.forward ({names})")
    last = max(i for i, p in enumerate(positional) if p.name in inputs)
    args: list[Any] = []
    for p in positional[:last + 1]:
        if p.name in inputs:
            args.append(inputs[p.name])
        elif p.default is not p.empty:
            args.append(p.default)
        else:
            raise AnalysisInputError(f"example_inputs does not give {p.name!r}, which "
                                     f"{type(model).__name__}.forward needs (it has no default)")
    return tuple(args), [p.name for p in positional[:last + 1]]


def _n_spatial(m: torch.nn.Module) -> int | None:
    """Spatial dims of a conv or pool layer (which also accept an unbatched ``(C, *spatial)`` input)."""
    if isinstance(m, torch.nn.modules.conv._ConvNd):
        return len(m.kernel_size)
    if isinstance(m, (torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd)):
        return {"1d": 1, "2d": 2, "3d": 3}.get(type(m).__name__[-2:].lower())
    return None


def _unbatched_call(gm: Any, mods: dict[str, torch.nn.Module] | None = None) -> str | None:
    """The first conv or pool layer that gets an unbatched input (``C, *spatial``), in words
    (``mods``: ``gm``'s modules by path, when the caller has them)."""
    mods = mods if mods is not None else dict(named_modules(gm, remove_duplicate=False))
    for n in gm.graph.nodes:
        if n.op != "call_module" or not n.args or not isinstance(n.args[0], torch.fx.Node):
            continue
        m = mods.get(str(n.target))
        x = n.args[0].meta.get("val")
        k = _n_spatial(m) if m is not None else None
        if k is not None and isinstance(x, torch.Tensor) and x.dim() == k + 1:
            return f"layer {n.target!r} ({type(m).__name__}) gets the {x.dim()}-d input {tuple(x.shape)}"
    return None


def _unbatched_error(gm: Any, inputs: Sequence[Any], failed: bool,
                     mods: dict[str, torch.nn.Module] | None = None) -> None:
    """Raise a one-line error when the single input looks unbatched: the model runs on it only as an
    unbatched sample (``failed=False``: a conv or pool gets a ``(C, *spatial)`` input) or not at all
    (``failed=True``), and with a batch dim of 1 added it runs batched."""
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        return
    site = _unbatched_call(gm, mods)  # after a failure, from the nodes that ran before it
    if not failed and site is None:
        return
    x = inputs[0]
    shape = tuple(int(d) for d in x.shape)
    batched = (1, *shape)
    try:
        propagate_shapes(gm, (torch.empty(batched, dtype=x.dtype, device="meta"),))
        fits = _unbatched_call(gm, mods) is None
    except Exception:  # noqa: BLE001 - with a batch dim it fails too: not an unbatched-input problem
        fits = False
    if not failed:
        propagate_shapes(gm, inputs)  # the shapes of the input as given (it ran before)
    if not fits:
        return
    how = f"{site}, which PyTorch treats as one unbatched sample" if site else "the model fails on it as given"
    raise AnalysisInputError(
        f"input shape {shape} looks like it is missing its batch dim ({how}); with it the shape is {batched}: "
        f"input_shape={batched} (the CLI's --input-shape takes the shape without the batch dim: "
        f"{','.join(map(str, shape))})")


def _holds_tensor(v: Any) -> bool:
    """A tuple, list or dict value with a tensor among its leaves (what attention or an RNN returns)."""
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (tuple, list)):
        return any(_holds_tensor(x) for x in v)
    if isinstance(v, dict):
        return any(_holds_tensor(x) for x in v.values())
    return False


def _check_materialised(tree: list[tuple[str, torch.nn.Module]]) -> None:
    """Lazy layers (``nn.LazyConv2d``...) have no shapes until a first forward pass fills them in
    (``tree``: the model's ``named_modules``)."""
    lazy = [(name, type(m).__name__) for name, m in tree
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


@deep_entry  # modules nested thousands of levels deep run where the stack has room for them
def analyze(
    model: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Sequence[Any] | dict[str, Any] | None = None,
    layout: str | Sequence[str | None] | dict[str, str] | None = None,
    strict: bool = False,
    registry: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    check_init: bool = False,
    trace: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    plugins: Iterable[Plugin] = (),
) -> Report:
    """Trace ``model`` and compute the receptive field of every node.

    Give either ``input_shape`` (with the batch dim: ``(N, C, *spatial)``, ``(N, T)`` ...) or
    ``example_inputs`` (a tuple with one value per ``forward`` argument, or a dict of
    keyword arguments, bound to ``forward``'s parameters; only shapes and dtypes are used).
    ``layout`` says what each input dim is, in letters: ``N`` batch, ``C`` channels/features,
    ``H W D T L`` one per positional axis (``"NCHW"``, ``"NHWC"``, ``"NT"``, ``"NL"``, ``"ND"``);
    one per input when there are several (a tuple, or a dict by name).  Without it: 3 dims or
    more ``N C *spatial``, 2-D integer ``NL``, 2-D float ``ND`` (no positional axis: RFs are
    ``n/a``).  RFs are measured along the positional axes of the first input that has one, in
    its layout's order.  ``input_shape`` alone builds a float32 input, int64 for layout ``NL``.
    The model is analysed on a copy of its module tree in eval mode
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
        ``model`` is not a module, the input shape or layout is malformed, the input looks like it
        lacks its batch dim, or the model has lazy layers.
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
    names: list[str]
    if example_inputs is None:
        if input_shape is None:
            raise AnalysisInputError("give input_shape=(N, C, H, W) or example_inputs=(tensor, ...)")
        shape = _check_shape(input_shape)
        ids = isinstance(layout, str) and layout.strip().upper() == "NL"  # token ids
        example_inputs = (torch.empty(shape, device="meta", dtype=torch.long if ids else torch.float32),)
        names = ["input"]
    else:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if isinstance(example_inputs, dict):
            if not example_inputs:
                raise AnalysisInputError("example_inputs is an empty dict")
            example_inputs, names = _positional(model, example_inputs)
        else:
            example_inputs = tuple(example_inputs)
            names = _arg_names(model, len(example_inputs))
        if not any(_first_tensor(x) is not None for x in example_inputs):
            raise AnalysisInputError("example_inputs holds no tensor")
    layouts = _layouts(layout, example_inputs, names)
    input_states, primary = _input_states(example_inputs, layouts, names)
    main_input = _main_input(example_inputs, layouts, primary)
    assert main_input is not None
    shape = tuple(int(d) for d in main_input[0].shape)
    main_layout = main_input[1]
    input_axes = tuple(i for i, d in enumerate(main_layout.dims) if d not in ("N", "C"))
    if weights is not None:
        from rfscope.weights import load_weights

        model = load_weights(model, weights)
    tree = named_modules(model)  # one walk of the module tree for the checks and the copy
    tree_modules = [m for _, m in tree]
    _check_materialised(tree)
    reg = registry if registry is not None else default_registry()
    plugins = list(plugins)
    reg = reg.with_overrides(plugins) if plugins else reg
    reg.ensure_loaded()
    copy = structural_copy(model, tree_modules)
    gm, trace_path, trace_why = trace_model(model, reg, example_inputs, leaf_modules, trace, copy=copy)
    symbolic_auto = trace == "auto" and trace_path == PATH_NAMES["symbolic_trace"]
    try:
        propagate_shapes(gm, example_inputs)
    except TraceError as e:
        if not (symbolic_auto and _model_runs(model, example_inputs)):
            if main_layout.inferred:
                _unbatched_error(gm, example_inputs, failed=True)
            raise explain_shape_error(gm, example_inputs, e) from e
        # the model runs on this input but its symbolic graph does not: fx traced another program
        why = (f"the symbolic graph fails where the model runs ({str(e).splitlines()[0]}): torch.fx traced "
               "another program than the model's")
        gm, trace_path, trace_why = fallback_paths(model, example_inputs, why, list(leaf_modules))
        _shapes(gm, example_inputs)
    else:
        if symbolic_auto and tests_tensor_types(model, tree_modules):
            gm, trace_path, trace_why = _type_tested(gm, model, example_inputs, list(leaf_modules))
    gm_modules = dict(named_modules(gm, remove_duplicate=False))
    if main_layout.inferred:
        _unbatched_error(gm, example_inputs, failed=False, mods=gm_modules)
    real_shapes = gm.meta.get(REAL_SHAPES)  # a data-dependent op: shapes on real tensors (rfscope.trace.datadep)
    if real_shapes:
        trace_why = f"{trace_why}; {real_shapes}" if trace_why else real_shapes
    input_size = tuple(shape[d] for d in input_axes)
    symbolic = trace_path == PATH_NAMES["symbolic_trace"]
    states = input_states if symbolic else _flat_states(example_inputs, input_states)
    records, unsupported, errors = run_plugins(gm, reg, input_size, strict=strict, input_states=states,
                                               modules=gm_modules)
    modules: dict[str, str] = {}
    containers: dict[str, str] = {}  # call key -> last node whose value holds tensors (a tuple, a dict)
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if not isinstance(n.meta.get("val"), torch.Tensor):
            if _holds_tensor(n.meta.get("val")):  # attention, RNNs: the call returns a tuple or a dict
                for key in (n.meta.get("nn_module_stack") or {}):
                    containers[key] = n.name
                if n.op == "call_module":
                    containers.setdefault(str(n.target), n.name)
            continue
        # a node that does not depend on the input (batch-norm statistics in ATen graphs) never
        # replaces one that does as the module's output
        depends = isinstance(records[n.name].state, TensorRF)
        for key in (n.meta.get("nn_module_stack") or {}):
            if depends or key not in modules or not isinstance(records[modules[key]].state, TensorRF):
                modules[key] = n.name
        if n.op == "call_module":
            modules.setdefault(str(n.target), n.name)
    for key, name in containers.items():  # a call with no tensor-valued node: its tuple-producing node
        modules.setdefault(key, name)
    for key, name in gm.meta.get(FIRST_OUTPUTS, {}).items():  # a call that returns a tuple: its first tensor
        if name in records and isinstance(records[name].state, TensorRF):
            modules[key] = name
    graph = build_graph(records)
    warnings, check_errors = diagnose(records, graph, input_size)
    report = Report(tuple(shape), records, modules, graph, gm, count(records, gm, copy), unsupported,
                    errors + check_errors, trace_path=trace_path, trace_fallback=trace_why, warnings=warnings,
                    model_class=type(model).__name__, layout=main_layout.text, input_axes=input_axes)
    if check_init:
        report.findings = check(records, gm, model, example_inputs, registry=reg, modules=modules,
                                trace_path=trace_path, leaf_modules=leaf_modules)
    return report


@deep_entry
def check_init(
    model: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Sequence[Any] | dict[str, Any] | None = None,
    layout: str | Sequence[str | None] | dict[str, str] | None = None,
    report: Report | None = None,
    registry: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    forward: bool = True,
    seed: int = 0,
) -> list[Finding]:
    """Check ``model``'s initial weights: analyse it, then run the init-check pass
    (:func:`rfscope.passes.initcheck.check`); returns :class:`~rfscope.Finding` s (errors first).

    ``input_shape``/``example_inputs``/``layout`` as for :func:`analyze` (``input_shape`` may also be
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
    require_real_weights(model)
    reg = registry if registry is not None else default_registry()
    leaf_modules = list(leaf_modules)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict) and isinstance(model, torch.nn.Module) and example_inputs:
        example_inputs, names = _positional(model, example_inputs)
        if isinstance(layout, dict):
            layout = tuple(layout.get(n) for n in names)
    if report is None:
        report = analyze(model, input_shape, example_inputs=example_inputs, layout=layout, registry=reg,
                         leaf_modules=leaf_modules)
    if example_inputs is None:
        ids = isinstance(layout, str) and layout.strip().upper() == "NL"  # token ids, as analyze builds them
        example_inputs = (torch.empty(report.input_shape, device="meta", dtype=torch.long if ids else torch.float32),)
    if isinstance(example_inputs, dict):
        raise AnalysisInputError("example_inputs is an empty dict")
    findings = check(report.records, report.gm, model, example_inputs, registry=reg, modules=report.modules,
                     trace_path=report.trace_path, leaf_modules=leaf_modules, forward=forward, seed=seed)
    report.findings = findings
    return findings
