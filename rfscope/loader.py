"""Find the model a CLI user means: ``file.py[:attr]``, ``package.module:attr``, ``torchvision:name``.

Loading a ``.py`` file executes it, exactly like ``python file.py`` would.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import keyword
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfscope.core.errors import RfscopeError

__all__ = ["LoadError", "LoadedModel", "load_model"]


class LoadError(RfscopeError, ValueError):
    """The target could not be turned into a model; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    source: str
    input_shape: tuple[int, ...] | None = None
    example_inputs: tuple[Any, ...] | None = None


def _module_name(path: Path) -> str:
    """The file's stem (``net.py`` -> ``net``: readable, stable node targets such as ``net.Out``) unless
    that names another module; then a name derived from the full path (stable across runs)."""
    real = path.resolve()
    stem = path.stem
    if stem.isidentifier() and not keyword.iskeyword(stem):
        loaded = sys.modules.get(stem)
        if loaded is not None:
            if getattr(loaded, "__file__", None) == str(real):
                return stem
        else:
            try:
                found = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                found = None
            if found is None or found.origin == str(real):
                return stem
    return f"_rfscope_user_{hashlib.sha1(str(real).encode()).hexdigest()[:12]}"


def _exec_file(path: Path) -> Any:
    if not path.exists():
        raise LoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise LoadError(f"{str(path)!r} is a directory; give a .py file that defines the model")
    if path.suffix != ".py":
        raise LoadError(f"{str(path)!r} is not a Python file (.py); give a .py file or module.path:attr")
    try:
        src = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(f"cannot read {str(path)!r}: {e}") from e
    try:
        compile(src, str(path), "exec")
    except SyntaxError as e:
        raise LoadError(f"syntax error in {path}, line {e.lineno}: {e.msg}") from e
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    parent = str(path.resolve().parent)
    added = parent not in sys.path
    if added:
        sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(mod)
    except SystemExit as e:
        raise LoadError(f"{path} called sys.exit({e.code}) while being loaded") from e
    except Exception as e:
        raise LoadError(f"running {path} failed: {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(parent)
    return mod


def _build(obj: Any, what: str) -> torch.nn.Module:
    if isinstance(obj, torch.nn.Module):
        return obj
    if callable(obj):  # a class or a factory function
        try:
            sig = inspect.signature(obj)
            required = [
                p for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        except (TypeError, ValueError):
            required = []
        if required:
            raise LoadError(
                f"{what} needs arguments ({', '.join(p.name for p in required)}); "
                "define a zero-argument build_model() or a module-level `model`"
            )
        try:
            out = obj()
        except Exception as e:
            raise LoadError(f"building the model with {what}() failed: {type(e).__name__}: {e}") from e
        if isinstance(out, torch.nn.Module):
            return out
        raise LoadError(f"{what}() returned {type(out).__name__}, not a torch.nn.Module")
    raise LoadError(f"{what} is a {type(obj).__name__}, not a torch.nn.Module or a function returning one")


def _discover(mod: Any, source: str) -> torch.nn.Module:
    ns = vars(mod)
    if "model" in ns:
        return _build(ns["model"], f"{source}:model")
    if "build_model" in ns:
        return _build(ns["build_model"], f"{source}:build_model")
    instances = [k for k, v in ns.items() if isinstance(v, torch.nn.Module) and not k.startswith("_")]
    if len(instances) == 1:
        return ns[instances[0]]
    if len(instances) > 1:
        raise LoadError(
            f"{source} defines several nn.Module instances ({', '.join(sorted(instances))}); "
            f"pick one with {source}:NAME"
        )
    classes = [k for k, v in ns.items() if inspect.isclass(v) and issubclass(v, torch.nn.Module)
               and getattr(v, "__module__", None) == mod.__name__]
    hint = f" (it defines the classes {', '.join(classes)}: use {source}:CLASS)" if classes else ""
    raise LoadError(
        f"no model found in {source}: define `model` (an nn.Module or a zero-argument function), "
        f"`build_model()`, or exactly one nn.Module instance{hint}"
    )


def _shape_from(mod: Any) -> tuple[tuple[int, ...] | None, tuple[Any, ...] | None]:
    ns = vars(mod) if mod is not None else {}
    src = getattr(mod, "__file__", None) or getattr(mod, "__name__", "the model file")
    shape = ns.get("input_shape")
    ex = ns.get("example_inputs")
    if callable(ex):
        try:
            ex = ex()
        except Exception as e:
            raise LoadError(f"calling example_inputs() in {src} failed: {type(e).__name__}: {e}") from e
    if isinstance(ex, torch.Tensor):
        ex = (ex,)
    if ex is not None and not (isinstance(ex, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in ex)):
        raise LoadError(f"example_inputs in {src} must be a tensor or a tuple of tensors, got {type(ex).__name__}")
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as e:
            raise LoadError(
                f"input_shape in {src} must be a tuple of ints with the batch dim, e.g. (1, 3, 224, 224); "
                f"got {shape!r}"
            ) from e
    return shape, (tuple(ex) if ex is not None else None)


def load_model(target: str) -> LoadedModel:
    """Resolve a CLI target to a model (see module docstring)."""
    path_part, _, attr = target.partition(":")
    if target.endswith(".py") or path_part.endswith(".py") or "/" in path_part or Path(path_part).exists():
        mod = _exec_file(Path(path_part))
        source = path_part
    else:
        if path_part == "torchvision":
            if not attr:
                raise LoadError("give a torchvision model name, e.g. torchvision:resnet50")
            try:
                import torchvision.models as tvm
            except ImportError as e:
                raise LoadError("torchvision is not installed (pip install torchvision)") from e
            fn = getattr(tvm, attr, None)
            if fn is None or not callable(fn):
                raise LoadError(f"torchvision.models has no model {attr!r}")
            try:
                model = fn(weights=None)
            except Exception as e:
                raise LoadError(f"building torchvision.models.{attr} failed: {type(e).__name__}: {e}") from e
            tv_shape: tuple[int, ...] = (1, 3, 299, 299) if attr.startswith("inception") else (1, 3, 224, 224)
            return LoadedModel(model, target, tv_shape)
        try:
            mod = importlib.import_module(path_part)
        except ImportError as e:
            raise LoadError(
                f"{path_part!r} is neither a .py file nor an importable module ({e})"
            ) from e
        source = path_part
    shape, ex = _shape_from(mod)
    if attr:
        if not hasattr(mod, attr):
            avail = [k for k, v in vars(mod).items() if not k.startswith("_")
                     and (isinstance(v, torch.nn.Module) or inspect.isclass(v) and issubclass(v, torch.nn.Module)
                          or inspect.isfunction(v))]
            raise LoadError(f"{source} has no attribute {attr!r}; candidates: {', '.join(avail) or 'none'}")
        model = _build(getattr(mod, attr), f"{source}:{attr}")
    else:
        model = _discover(mod, source)
    return LoadedModel(model, source if not attr else f"{source}:{attr}", shape, ex)
