"""Which tracer analyses a model: symbolic_trace first, then torch.export, then make_fx, and why."""

from __future__ import annotations

import inspect
import os
import re
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx

from rfscope.core.errors import TraceError
from rfscope.core.locks import running
from rfscope.core.registry import Registry
from rfscope.trace.aten import _quiet, trace_export, trace_make_fx
from rfscope.trace.copy import _to_meta, meta_copy, modules, structural_copy
from rfscope.trace.symbolic import TYPE_TESTS, symbolic_mutation_hazard, trace

#: values of ``analyze(..., trace=)``
TRACE_MODES = ("auto", "symbolic_trace", "export", "make_fx")


#: what ``Report.trace_path`` says for each path
PATH_NAMES = {
    "symbolic_trace": "symbolic_trace",
    "export": "torch.export",
    "make_fx": "make_fx (specialised to the example input)",
}


_PLUGIN_DOCS = "README, 'Writing a plugin'"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0] if s else ''}".rstrip(": ")


def failure_site(e: BaseException) -> str | None:
    """``file:line `code` `` of the innermost frame of ``e`` outside torch and rfscope."""
    exc: BaseException | None = e
    while exc is not None and exc.__cause__ is not None:
        exc = exc.__cause__
    if exc is None or exc.__traceback__ is None:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    own_dir = os.path.dirname(os.path.abspath(__file__))
    site = None
    for fr in traceback.extract_tb(exc.__traceback__):
        f = os.path.abspath(fr.filename)
        if f.startswith(torch_dir) or f.startswith(own_dir) or "<" in fr.filename:
            continue
        site = f"{os.path.basename(fr.filename)}:{fr.lineno}" + (f" `{fr.line.strip()}`" if fr.line else "")
    return site


def _explain(err: TraceError, tried: list[str]) -> str:
    mod = getattr(err, "module", None)
    site = failure_site(err)
    where = (f" in module {mod!r}" if mod else "") + (f" at {site}" if site else "")
    cause = err.__cause__
    what = _first_line(cause) if cause is not None else str(err)
    fix = []
    if mod:
        fix.append(f"keep that module opaque with leaf_modules=[{mod!r}] / --leaf {mod}")
    fix.append("give example_inputs (the model input that the forward expects)")
    fix.append(f"or write a plugin for it ({_PLUGIN_DOCS})")
    also = f"; {'; '.join(tried)}" if tried else ""
    return f"cannot trace the model: torch.fx failed{where}: {what}{also}. Fix: {', '.join(fix)}"


def trace_model(
    model: torch.nn.Module,
    registry: Registry,
    example_inputs: Sequence[Any],
    leaf_modules: Iterable[str] = (),
    mode: str = "auto",
    copy: torch.nn.Module | None = None,
) -> tuple[fx.GraphModule, str, str | None]:
    """Trace ``model`` by the first path that works.

    ``copy`` is the copy to trace symbolically (:func:`structural_copy`, made here when not given).
    Returns ``(graph module, path name, why symbolic tracing was not used or None)``.
    Shapes are not propagated here.
    """
    if mode not in TRACE_MODES:
        raise ValueError(f"trace={mode!r}: use one of {', '.join(TRACE_MODES)}")
    leaves = list(leaf_modules)
    if mode == "export":
        return _wrap(lambda: trace_export(model, example_inputs), "torch.export"), PATH_NAMES["export"], _forced(leaves)
    if mode == "make_fx":
        return _wrap(lambda: trace_make_fx(model, example_inputs), "make_fx"), PATH_NAMES["make_fx"], _forced(leaves)
    cp = copy if copy is not None else structural_copy(model)
    symbolic_err: TraceError | None = None
    try:
        gm = trace(cp, registry, leaves)
    except TraceError as err:
        if mode == "symbolic_trace":
            raise TraceError(_explain(err, [])) from err
        symbolic_err = err
    else:
        hazard = symbolic_mutation_hazard(gm)
        tests: list[str] = gm.meta.get(TYPE_TESTS) or []
        if hazard is None and (not tests or mode == "symbolic_trace"):
            return gm, PATH_NAMES["symbolic_trace"], None
        if mode == "symbolic_trace":
            raise TraceError(f"symbolic_trace cannot follow an {hazard}: use trace='auto' (--trace auto), "
                             "which uses torch.export, or write that update out of place (y = y + z)")
        if hazard is None:
            why = (f"the forward tests the type of a traced value ({'; '.join(dict.fromkeys(tests))}), which "
                   "torch.fx answers for its Proxy, not for the tensor: the symbolic graph may follow another "
                   "branch than the model")
            return fallback_paths(model, example_inputs, why, leaves)
    if symbolic_err is None:
        why = f"symbolic_trace cannot follow an {hazard}"
    else:
        why = _explain(symbolic_err, []).split(". Fix:")[0]
    try:
        return fallback_paths(model, example_inputs, why, leaves)
    except _AllFailed as e:
        if symbolic_err is None:
            raise TraceError(f"{e}; write that update out of place (y = y + z)") from None
        raise TraceError(_explain(symbolic_err, e.tried)) from symbolic_err


class _AllFailed(TraceError):
    """Neither fallback tracer worked (``tried`` says why, one entry each)."""

    def __init__(self, msg: str, tried: list[str]) -> None:
        super().__init__(msg)
        self.tried = tried


def fallback_paths(model: torch.nn.Module, example_inputs: Sequence[Any], why: str,
                   leaves: Sequence[str] = ()) -> tuple[fx.GraphModule, str, str]:
    """``torch.export``, then ``make_fx``, when the symbolic graph cannot be used (``why``).

    Returns ``(graph module, path name, why)``; raises a :class:`TraceError` naming ``why`` and
    each tracer's failure when neither works.
    """
    if leaves:
        why += f"; {_LEAF_NOTE}"
    tried: list[str] = []
    stop = _meta_stop(model, example_inputs)
    data_dependent = stop is not None
    if stop is not None:  # torch.export would trace all the way to it and fail there (seconds on a detector)
        tried.append(f"torch.export skipped: the model's forward on meta tensors stops at {stop}")
    else:
        try:
            with _quiet():  # a failed export logs the whole graph as a warning
                return trace_export(model, example_inputs), PATH_NAMES["export"], why
        except Exception as e:  # noqa: BLE001 - any failure moves on to the next path
            tried.append(f"torch.export failed: {_first_line(e)}")
            data_dependent = _data_dependent_guard(e)
    if data_dependent:
        meets = f"the forward meets {stop}" if stop else "torch.export stopped at a data-dependent guard"
        why += f"; {meets}, so make_fx traces the path the example input takes"
    try:
        with _quiet():  # a model with data-dependent parts updates views in place: functionalised at once
            return trace_make_fx(model, example_inputs, functional=data_dependent), PATH_NAMES["make_fx"], why
    except Exception as e:  # noqa: BLE001
        tried.append(f"make_fx failed: {_first_line(e)}")
    raise _AllFailed(f"{why}, and {'; '.join(tried)}", tried)


def _meta_stop(model: torch.nn.Module, example_inputs: Sequence[Any]) -> str | None:
    """The data-dependent op (``nonzero``, ``.item()``...) at which the model's own forward stops on
    meta tensors, in words, or ``None`` (it runs, fails otherwise, or has meta weights: make_fx
    could not trace it, so torch.export must be tried)."""
    if any(t is not None and t.device.type == "meta"
           for m in modules(model) for t in (*m._parameters.values(), *m._buffers.values())):
        return None
    try:
        with _quiet():
            real_outputs(model, example_inputs)
    except Exception as e:  # noqa: BLE001 - classified below
        text = f"{type(e).__name__}: {e}".lower()
        for op in ("nonzero", "masked_select", "item()", ".item", "_local_scalar_dense", "unique", "nms",
                   "data-dependent", "data dependent", "dynamicoutputshape", "datadependentoutput"):
            if op in text:
                name = {"item()": "item()", ".item": "item()", "_local_scalar_dense": "item()"}.get(op, op)
                site = failure_site(e)
                return f"a data-dependent op ({name}{' at ' + site if site else ''})"
    return None


def _data_dependent_guard(e: BaseException) -> bool:
    """``torch.export`` failed on a value that depends on the data (``nonzero``, ``.item()``...)."""
    exc: BaseException | None = e
    while exc is not None:
        name = type(exc).__name__
        if "DataDependent" in name or "data-dependent" in str(exc).lower() or "data dependent" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def real_outputs(model: torch.nn.Module, example_inputs: Sequence[Any]) -> Any:
    """What the model itself returns for the example inputs, run on a meta copy (no values)."""
    cp = meta_copy(model)
    with torch.no_grad(), running():  # not while torch.export traces (rfscope.core.locks)
        return cp(*_to_meta(tuple(example_inputs)))


def _signature(x: Any) -> tuple[str, list[tuple[tuple[int, ...], torch.dtype] | str]]:
    """Output structure and, per leaf, the shape and dtype of a tensor (the type name otherwise)."""
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(x)
    return str(spec), [(tuple(int(d) for d in v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
                       for v in leaves]


def graph_differs(gm: fx.GraphModule, model: torch.nn.Module, example_inputs: Sequence[Any]) -> str | None:
    """How the shape-propagated graph's output differs from the model's own (run on meta), or None.

    None also when the model cannot run on meta (nothing to compare with).
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    try:
        ref = real_outputs(model, example_inputs)
    except Exception:  # noqa: BLE001 - the model needs real values: no comparison
        return None
    (gs, gl), (rs, rl) = _signature(out.meta.get("val")), _signature(ref)
    if gs != rs:
        return "the symbolic graph returns another structure than the model"
    for i, (g, r) in enumerate(zip(gl, rl, strict=True)):
        if g != r:
            return f"output {i} of the symbolic graph is {_fmt(g)}, the model's is {_fmt(r)}"
    return None


def _fmt(sig: Any) -> str:
    if isinstance(sig, tuple):
        return f"{'x'.join(map(str, sig[0]))} {str(sig[1]).replace('torch.', '')}"
    return str(sig)


_TYPE_TEST = re.compile(r"\bisinstance\(\s*[\w.\[\]]+\s*,\s*\(?\s*(torch\.)?Tensor\b")


_type_test_cache: dict[type, bool] = {}


def tests_tensor_types(model: torch.nn.Module, tree: list[torch.nn.Module] | None = None) -> bool:
    """A module class of ``model`` (outside torch) whose ``forward`` tests ``isinstance(..., Tensor)``:
    a cheap screen for code that branches on the type of a traced value (a Proxy under fx).
    ``tree``: ``modules(model)``, when the caller has walked it already."""
    for cls in {type(m) for m in (modules(model) if tree is None else tree)}:
        hit = _type_test_cache.get(cls)
        if hit is None:
            hit = False
            if not cls.__module__.startswith("torch."):
                try:
                    hit = bool(_TYPE_TEST.search(inspect.getsource(cls.forward)))
                except (OSError, TypeError):
                    hit = False
            _type_test_cache[cls] = hit  # a pure function of the class: a racing thread writes the same
        if hit:
            return True
    return False


_LEAF_NOTE = "leaf_modules are ignored by the ATen-level tracers (their ops are analysed one by one)"


def _forced(leaves: list[str]) -> str:
    return "requested" + (f"; {_LEAF_NOTE}" if leaves else "")


def _wrap(fn: Any, what: str) -> fx.GraphModule:
    try:
        with _quiet():
            gm = fn()
    except TraceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TraceError(f"{what} could not trace the model: {_first_line(e)}; trace='auto' (--trace auto) "
                         "tries every path") from e
    assert isinstance(gm, fx.GraphModule)
    return gm

