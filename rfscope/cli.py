"""Command line: ``rfscope analyze model.py[:attr] --input-shape 3,224,224``.

Exit status: 0 fine, 1 a finding of severity ``error`` (``--check-init``), 2 bad input,
130 interrupted (Ctrl-C).  Errors are one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["main", "parse_shape", "CliError"]

F = TypeVar("F", bound=Callable[..., Any])

#: the largest tensor size torch can index (int64 element counts)
_MAX_NUMEL = 2**63 - 1


class CliError(click.ClickException):
    """A one-line user error; exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"rfscope: error: {self.format_message()}", err=True)


class Interrupted(click.ClickException):
    """Ctrl-C: one line, exit status 130 (128 + SIGINT), no traceback."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: Any = None) -> None:
        click.echo("rfscope: interrupted", err=True)


class _Main(click.Group):
    """The ``rfscope`` group: a Ctrl-C anywhere in a command (importing torch, building the
    model, tracing, probing) is :class:`Interrupted`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (no batch dim) -> ``(1, 3, 224, 224)``."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError as e:
        raise CliError(f"--input-shape {text!r} is not a comma-separated list of ints, e.g. 3,224,224") from e
    if len(dims) < 2:
        raise CliError(f"--input-shape {text!r} needs channels and at least one spatial size, e.g. 3,224,224")
    if any(d <= 0 for d in dims):
        raise CliError(f"--input-shape {text!r} has a zero or negative size")
    numel = 1
    for d in dims:
        numel *= d
    if numel > _MAX_NUMEL // 8:  # bytes of a float64 copy must fit in int64 too
        raise CliError(f"--input-shape {text!r} is too large: {numel:.3g} elements do not fit in a tensor "
                       "(at most 2**60); give the real input size")
    return (1, *dims)


def _show_note(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: Any = None, line: str | None = None) -> None:
    """One ``rfscope: note:`` line on stderr for rfscope's own notes (which checkpoint entry was loaded)."""
    if category.__module__.startswith("rfscope"):
        click.echo(f"rfscope: note: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _user_error(e: BaseException) -> str | None:
    """torch errors that bad input causes, as a one-line message (``None``: not one of them)."""
    msg = str(e)
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    if isinstance(e, RuntimeError) and ("does not require grad" in msg or "not have been used in the graph" in msg):
        return ("no gradient reaches the input from the probed node: its output does not depend on the input "
                "through differentiable ops (a constant, detach(), argmax ...); probe a node that does (--node)")
    if isinstance(e, (RuntimeError, OverflowError)) and "overflow" in msg.lower():
        return f"a tensor size overflowed ({first}); the input is too large: give a smaller --input-shape"
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in msg
                                                                        or "out of memory" in msg.lower())):
        return (f"out of memory ({first}); use a smaller --input-shape, --batch-size or --samples, "
                "or another --device")
    return None


def handle_errors(fn: F) -> F:
    """Turn known exceptions into one-line errors (exit 2) unless ``--debug``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_note
                return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if debug:
                raise
            msg = _user_error(e) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
            from rfscope.core.errors import TraceError
            from rfscope.core.registry import PluginError
            from rfscope.loader import LoadError
            from rfscope.passes.interpret import StrictError
            from rfscope.pipeline import AnalysisInputError
            from rfscope.report import UnknownNameError

            known = (LoadError, AnalysisInputError, TraceError, UnknownNameError, StrictError, PluginError,
                     OSError, ValueError)
            if not isinstance(e, known) and _user_error(e) is None:
                msg = f"internal error ({type(e).__name__}: {msg}); rerun with --debug and report it"
            raise CliError(msg) from e

    return wrapper  # type: ignore[return-value]


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rfscope")
def main() -> None:
    """rfscope: receptive fields, counts and init checks for PyTorch models."""


def _load(target: str, input_shape: str | None) -> tuple[Any, tuple[int, ...] | None, tuple[Any, ...] | None]:
    from rfscope.loader import load_model

    lm = load_model(target)
    shape = parse_shape(input_shape) if input_shape else lm.input_shape
    ex = None if input_shape else lm.example_inputs
    if shape is None and ex is None:
        raise CliError(
            f"no input shape: pass --input-shape C,H,W (e.g. 3,224,224) or define input_shape in {lm.source}"
        )
    return lm.model, shape, ex


def _check_leaves(model: Any, leaves: tuple[str, ...]) -> None:
    """A ``--leaf`` that names no submodule is an error listing close matches (it would be ignored)."""
    if not leaves:
        return
    from rfscope.trace.copy import named_modules  # iterative: a model nested thousands of levels deep has no limit

    paths = [name for name, _ in named_modules(model) if name]
    known = set(paths)
    for leaf in leaves:
        if leaf not in known:
            close = difflib.get_close_matches(leaf, paths, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `rfscope analyze` lists the layers"
            raise CliError(f"--leaf {leaf!r} is not a submodule path of the model{hint}")


@main.command()
@click.argument("target")
@click.option("--input-shape", "input_shape", help="C,H,W (or C,L / C,D,H,W) without the batch dim.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--node", "nodes", multiple=True, help="Report only this module path or node (repeatable).")
@click.option("--leaf", "leaves", multiple=True, help="Keep this submodule path opaque (repeatable).")
@click.option("--strict", is_flag=True, help="Fail (exit 2) on any op without a plugin.")
@click.option("--diagram", type=click.Path(dir_okay=False),
              help="Also write a Graphviz diagram: out.svg, .png, .pdf (needs `dot`), .dot or .gv.")
@click.option("--depth", type=click.IntRange(min=1), help="Diagram: collapse module calls nested deeper than N.")
@click.option("--rankdir", type=click.Choice(["TB", "LR"], case_sensitive=False), default="TB",
              show_default=True, help="Diagram: top-to-bottom or left-to-right.")
@click.option("--check-init", "check_init", is_flag=True,
              help="Also check the initial weights (needs real weights); exit 1 on an error finding.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Load this state-dict checkpoint (torch.load weights_only=True) into the model first.")
@click.option("--trace", "trace_mode", type=click.Choice(["auto", "symbolic_trace", "export", "make_fx"]),
              default="auto", show_default=True,
              help="Tracing path; auto falls back to torch.export, then make_fx, when torch.fx fails.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def analyze(target: str, input_shape: str | None, fmt: str, nodes: tuple[str, ...], leaves: tuple[str, ...],
            strict: bool, diagram: str | None, depth: int | None, rankdir: str, debug: bool,
            check_init: bool = False, weights: str | None = None, trace_mode: str = "auto") -> None:
    """Trace TARGET (model.py[:attr], module.path:attr, torchvision:NAME) and print per-layer RFs."""
    from rfscope.pipeline import analyze as run

    if diagram is not None:
        from rfscope.export import check_path

        check_path(diagram)  # fail before the analysis
    elif depth is not None:
        raise CliError("--depth only applies to a diagram: add --diagram out.svg")
    model, shape, ex = _load(target, input_shape)
    _check_leaves(model, leaves)
    # weights: loaded into a copy by analyze, so the init check sees the trained weights too
    report = run(model, shape, example_inputs=ex, strict=strict, leaf_modules=leaves, check_init=check_init,
                 trace=trace_mode, weights=weights)
    keep = {report.node_name(n) for n in nodes}  # fails early on unknown names
    if fmt == "json":
        d = report.to_dict()
        if nodes:
            d["nodes"] = [x for x in d["nodes"] if x["name"] in keep]
            d["modules"] = {k: v for k, v in d["modules"].items() if v["node"] in keep and k in nodes}
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(report.table(list(nodes) if nodes else None))
    if diagram is not None:
        from rfscope.export import render

        click.echo(render(report, diagram, depth=depth, rankdir=rankdir).message, err=True)
    if check_init:
        findings = report.findings or []
        if fmt != "json":
            click.echo("")
            click.echo("\n".join(str(f) for f in findings) if findings else "init check: no findings")
        if any(f.severity == "error" for f in findings):
            raise click.exceptions.Exit(1)


@main.command()
@click.argument("target")
@click.option("--mode", type=click.Choice(["exact", "erf"]), default="exact", show_default=True,
              help="exact: check the static RF with a linearised float64 copy; erf: effective RF.")
@click.option("--node", "nodes", multiple=True, help="Module path or node to probe (repeatable for exact).")
@click.option("--input-shape", "input_shape", help="C,H,W without the batch dim.")
@click.option("--samples", type=int, default=32, show_default=True, help="ERF: number of input samples.")
@click.option("--inputs", "inputs_path", help="ERF: a torch.save'd (N,C,H,W) tensor to use as inputs.")
@click.option("--image-dir", help="ERF: a folder of png/jpg images (resized, ImageNet-normalised).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64", "bfloat16"]),
              help="Default float64 (exact), float32 (erf); bfloat16 is checked against float32.")
@click.option("--batch-size", type=int, help="Probe rows / samples per batch (default 4 exact, 8 erf).")
@click.option("--reduction", type=click.Choice(["clip", "abs", "square"]), default="clip", show_default=True,
              help="ERF: clip negative gradients (RepLKNet), |grad| or grad² (Luo et al.).")
@click.option("--seed", type=int, default=0, show_default=True, help="ERF: seed of the random inputs.")
@click.option("--out", "out_dir", help="ERF: output folder for erf.npy, erf.json, erf.png.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--no-grow", is_flag=True, help="Exact: keep the input size even if units touch the border.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="ERF: load this state-dict checkpoint (weights_only=True) into a copy of the model first.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def probe(target: str, mode: str, nodes: tuple[str, ...], input_shape: str | None, samples: int,
          inputs_path: str | None, image_dir: str | None, device: str, dtype: str | None, batch_size: int | None,
          reduction: str, seed: int, out_dir: str | None, fmt: str, no_grow: bool, quiet: bool,
          weights: str | None, debug: bool) -> None:
    """Gradient probe of TARGET: exact RF validation (exit 1 on a disagreement) or the ERF."""
    from rfscope.probe.command import run_probe

    if samples < 1:
        raise CliError(f"--samples must be at least 1 (got {samples})")
    if batch_size is not None and batch_size < 1:
        raise CliError(f"--batch-size must be at least 1 (got {batch_size})")
    status = run_probe(target, mode, nodes, input_shape, samples, inputs_path, image_dir, device, dtype,
                       batch_size, reduction, seed, out_dir, fmt, not no_grow, quiet, weights=weights)
    if status:
        raise click.exceptions.Exit(status)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())
