"""Find the model a CLI user means: ``file.py[:attr]``, ``package.module:attr``, ``torchvision:NAME``,
``timm:NAME``.

Loading a ``.py`` file executes it, exactly like ``python file.py`` would.

``torchvision:NAME`` is any name of ``torchvision.models.list_models()`` (classification,
detection, segmentation, video, optical flow, quantization), built without weights, with its
family's natural input (:data:`TORCHVISION_INPUTS`); ``timm:NAME`` is any ``timm.list_models()``
name (``NAME.tag`` too), built with ``pretrained=False`` at the model's default input size.
With ``meta=True`` both are built on the ``meta`` device (no memory for weights, no init time)
where they can be; a model whose constructor needs real tensors is built on the CPU instead and
:attr:`LoadedModel.note` says why.  Nothing heavy is imported before :func:`load_model` runs.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import keyword
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfscope.core.errors import RfscopeError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

__all__ = ["LoadError", "LoadedModel", "TORCHVISION_INPUTS", "load_model"]

#: each torchvision family's default input (batch 1); classification and quantization models take
#: ``(1, 3, 224, 224)`` (Inception v3: 299)
TORCHVISION_INPUTS = {
    "classification": "(1, 3, 224, 224); inception_v3: (1, 3, 299, 299)",
    "quantization": "as classification (the float, quantisation-ready model)",
    "segmentation": "(1, 3, 520, 520)",
    "video": "(1, 3, 16, 112, 112) clips for r3d_18, mc3_18, r2plus1d_18; (1, 3, 16, 224, 224) for the others",
    "optical_flow": "two (1, 3, 224, 224) images (example_inputs)",
    "detection": "(1, 3, 320, 320), the eval transform set to resize to the input's own size (min_size = max_size = "
                 "320, so RFs are in input pixels); SSD300 (1, 3, 300, 300) (its fixed size)",
}


class LoadError(RfscopeError, ValueError):
    """The target could not be turned into a model; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    source: str
    input_shape: tuple[int, ...] | None = None
    example_inputs: tuple[Any, ...] | None = None
    #: a zoo model's device: ``"meta"`` or ``"cpu"``; ``None`` for files and modules (as they build it)
    device: str | None = None
    #: why a zoo model asked for on ``meta`` was built on the CPU (``None``: it was not)
    note: str | None = None
    #: called with the input shape the model is analysed at (a detector's transform resizes to it)
    adapt: Callable[[tuple[int, ...]], None] | None = None

    def inputs(self, shape: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, tuple[Any, ...] | None]:
        """``(input_shape, example_inputs)`` to analyse: the defaults, or ``shape`` (with the batch dim)
        instead.  A model whose default is several inputs of one shape (optical flow: two images)
        gets each of them at ``shape``."""
        if self.adapt is not None:
            self.adapt(shape if shape is not None else self.input_shape or ())
        if shape is None:
            return self.input_shape, self.example_inputs
        ex = self.example_inputs
        if ex is not None and len(ex) > 1 and self.device is not None:
            import torch

            if all(isinstance(x, torch.Tensor) and x.shape == ex[0].shape for x in ex):
                return shape, tuple(_image(shape, x.device) for x in ex)
        return shape, None


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
    import torch

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
    import torch

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
    import torch

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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close and name.lower() != name:
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _image(shape: tuple[int, ...], device: Any) -> torch.Tensor:
    """An input of ``shape``: empty on ``meta``, seeded uniform noise on a real device."""
    import torch

    if str(device) == "meta":
        return torch.empty(shape, device="meta")
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)


def _construct(build: Callable[[], Any], what: str, meta: bool,
               why_real: str | None = None) -> tuple[torch.nn.Module, str, str | None]:
    """``build()`` on ``meta`` when asked (and ``why_real`` is ``None``), else or when that fails on the CPU.
    Returns the model in eval mode, its device and a note saying why it is not on ``meta``."""
    import torch

    note = why_real if meta else None
    if meta and why_real is None:
        try:
            with torch.device("meta"):
                model = build()
            return model.eval(), "meta", None
        except Exception as e:  # noqa: BLE001 - any constructor failure on meta: build it for real
            note = f"{what} cannot be built on the meta device ({_first_line(e)}); built on the CPU instead"
    try:
        model = build()
    except Exception as e:
        raise LoadError(f"building {what} failed: {_first_line(e)}") from e
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), "cpu", note


def _torchvision_family(builder: Any) -> str:
    """``torchvision.models.detection.faster_rcnn`` -> ``detection``; top-level files -> classification."""
    parts = getattr(builder, "__module__", "").split(".")
    return parts[2] if len(parts) > 3 else "classification"


def _resize_to(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """A torchvision detector built here resizes its images to ``shape``'s own size (its eval transform
    would scale them to 800), so that the backbone sees the input at scale 1 and RFs are in input pixels."""
    t = getattr(model, "transform", None)
    if t is not None and len(shape) >= 2 and hasattr(t, "min_size"):
        t.min_size = (min(int(shape[-2]), int(shape[-1])),)
        t.max_size = max(int(shape[-2]), int(shape[-1]))


def _torchvision(name: str, target: str, meta: bool) -> LoadedModel:
    if not name:
        raise LoadError("give a torchvision model name, e.g. torchvision:resnet50")
    try:
        import torchvision.models as tvm
    except ImportError as e:
        raise LoadError("torchvision is not installed (pip install torchvision)") from e
    names = sorted(tvm.list_models())
    if name not in names:
        raise LoadError(f"torchvision has no model {name!r}{_suggest(name, names)} "
                        "(torchvision.models.list_models() lists them)")
    builder = tvm.get_model_builder(name)
    family = _torchvision_family(builder)
    kwargs: dict[str, Any] = {"weights": None}
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "weights_backbone" in params:  # detection and segmentation default to downloading the backbone's
        kwargs["weights_backbone"] = None
    if family == "quantization":
        kwargs["quantize"] = False  # the float, quantisation-ready model (quantize=True needs real weights)
    why_real = None
    if family == "detection":
        why_real = (f"torchvision:{name} is built on the CPU: a detector is traced by running it (make_fx), "
                    "which needs real weights")
    model, device, note = _construct(lambda: builder(**kwargs), f"torchvision.models.{name}", meta, why_real)
    if family == "optical_flow":
        shape = (1, 3, 224, 224)
        return LoadedModel(model, target, shape, (_image(shape, device), _image(shape, device)), device, note)
    if family == "video":
        size = 112 if name.startswith(("r3d", "mc3", "r2plus1d")) else 224
        return LoadedModel(model, target, (1, 3, 16, size, size), None, device, note)
    if family == "segmentation":
        return LoadedModel(model, target, (1, 3, 520, 520), None, device, note)
    if family == "detection":
        fixed = getattr(getattr(model, "transform", None), "fixed_size", None)  # SSD: its own fixed size
        s = int(fixed[0]) if fixed else 320
        adapt = None if fixed else functools.partial(_resize_to, model)
        return LoadedModel(model, target, (1, 3, s, s), None, device, note, adapt)
    size = 299 if "inception_v3" in name else 224
    return LoadedModel(model, target, (1, 3, size, size), None, device, note)


def _timm(name: str, target: str, meta: bool) -> LoadedModel:
    if not name:
        raise LoadError("give a timm model name, e.g. timm:resnet50")
    try:
        import timm
        import timm.data
    except ImportError as e:
        raise LoadError(f"timm is not installed (pip install timm); it is needed for {target}") from e
    base, _, tag = name.partition(".")  # NAME or NAME.TAG (a pretrained config: its input size)
    if not timm.is_model(base):
        raise LoadError(f"timm has no model {base!r}{_suggest(base, timm.list_models())} "
                        "(timm.list_models() lists them)")
    if tag:
        tagged = timm.list_pretrained(f"{base}.*")
        if name not in tagged:
            tags = [t.partition(".")[2] for t in tagged]
            raise LoadError(f"timm model {base!r} has no tag {tag!r}{_suggest(tag, tags)} "
                            f"(its tags: {', '.join(tags) or 'none'})")
    model, device, note = _construct(lambda: timm.create_model(name, pretrained=False), f"timm model {name}", meta)
    try:
        size = tuple(int(s) for s in timm.data.resolve_data_config({}, model=model)["input_size"])
    except Exception as e:  # noqa: BLE001 - a model without a data config
        raise LoadError(f"timm model {name} has no default input size ({_first_line(e)}); "
                        "pass --input-shape C,H,W") from e
    return LoadedModel(model, target, (1, *size), None, device, note)


def load_model(target: str, *, meta: bool = False) -> LoadedModel:
    """Resolve a CLI target to a model (see module docstring).

    ``meta=True``: build ``torchvision:`` and ``timm:`` models on the ``meta`` device where they can
    be (for an analysis that needs no weights); files and modules are built as they build themselves.
    """
    import torch

    path_part, _, attr = target.partition(":")
    if target.endswith(".py") or path_part.endswith(".py") or "/" in path_part or Path(path_part).exists():
        mod = _exec_file(Path(path_part))
        source = path_part
    else:
        if path_part == "torchvision":
            return _torchvision(attr, target, meta)
        if path_part == "timm":
            return _timm(attr, target, meta)
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
