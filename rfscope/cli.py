"""Command line: ``rfscope analyze model.py[:attr] --input-shape 3,224,224``.

Exit status: 0 fine, 1 a finding of severity ``error`` (``--check-init``), 2 bad input,
130 interrupted (Ctrl-C).  Errors are one line; ``--debug`` shows the traceback.

This module is the ``rfscope`` group and its ``analyze`` command; ``rfscope probe`` is
:data:`rfscope.probe.command.probe`, added here.  What both commands share (one-line errors,
Ctrl-C, ``--input-shape``) is :mod:`rfscope.cli_support`.  Nothing here imports torch before a
command runs.
"""

from __future__ import annotations

import difflib
import json
import sys
from typing import Any

import click

from rfscope.cli_support import CONTEXT_SETTINGS, CliError, InterruptibleGroup, handle_errors, parse_shape, slow_notice
from rfscope.probe.command import probe

__all__ = ["main", "parse_shape", "CliError"]


@click.group(cls=InterruptibleGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="rfscope")
def main() -> None:
    """rfscope: receptive fields, counts and init checks for PyTorch models."""


def _load(target: str, input_shape: str | None, *, meta: bool = False, debug: bool = False,
          quiet: bool = False) -> tuple[Any, tuple[int, ...] | None, tuple[Any, ...] | None]:
    """The model and its input.  ``meta``: no weights are needed, so ``torchvision:``/``timm:`` models
    are built on the meta device where they can be (``--debug`` says when one could not)."""
    from rfscope.loader import load_model

    with slow_notice("loading the model", quiet=quiet):
        lm = load_model(target, meta=meta)
    if debug and lm.note:
        click.echo(f"rfscope: note: {lm.note}", err=True)
    shape, ex = lm.inputs(parse_shape(input_shape) if input_shape else None)
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
@click.option("--input-shape", "input_shape",
              help="The input's shape WITHOUT the batch dim: C,H,W (or C,L / C,D,H,W; 16000 with --layout NT, "
                   "64 with --layout NL, 32 for a feature vector). A model file's input_shape = (1, 3, 224, 224) "
                   "has it.")
@click.option("--layout", "layout", metavar="LETTERS",
              help="What each input dim is, batch included: N batch, C channels/features, H W D T L one per "
                   "positional axis (NCHW, NHWC, NCT, NT, NL, ND). Several inputs: one per input, comma-"
                   "separated (empty: inferred). Default: N C *spatial for 3+ dims, NL for 2-D integer, "
                   "ND for 2-D float.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown", "html"]), default="table",
              show_default=True, help="table (fits the terminal), json (the full report), or the table's rows as "
                                      "csv (exact counts), markdown or html.")
@click.option("--columns", metavar="NAMES",
              help="The table's columns, in order, comma-separated: layer, op, shape, params, macs, rf, stride, "
                   "padding, status, node (default: all but node).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing (for runs that only write files: --diagram).")
@click.option("--node", "nodes", multiple=True, help="Report only this module path or node (repeatable).")
@click.option("--leaf", "leaves", multiple=True, help="Keep this submodule path opaque (repeatable).")
@click.option("--strict", is_flag=True, help="Fail (exit 2) on any op without a plugin.")
@click.option("--diagram", type=click.Path(dir_okay=False),
              help="Also write a Graphviz diagram: out.svg, .png, .pdf (needs Graphviz's dot), .dot or .gv.")
@click.option("--depth", type=click.IntRange(min=1),
              help="One row (diagram: one box) per module call at depth N (1: the model's children), with its "
                   "subtree's params and MACs and its output's RF.")
@click.option("--rankdir", type=click.Choice(["TB", "LR"], case_sensitive=False), default="TB",
              show_default=True, help="Diagram: top-to-bottom or left-to-right.")
@click.option("--dot", "dot", metavar="PATH",
              help="Diagram: the renderer to run (default: $RFSCOPE_DOT, else Graphviz's dot on PATH, "
                   "else the bundled graphviz-pure).")
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
            check_init: bool = False, weights: str | None = None, trace_mode: str = "auto",
            dot: str | None = None, layout: str | None = None, columns: str | None = None,
            quiet: bool = False) -> None:
    """Trace TARGET (model.py[:attr], module.path:attr, torchvision:NAME, timm:NAME) and print per-layer RFs."""
    from rfscope.pipeline import analyze as run

    if diagram is not None:
        from rfscope.export import check_path

        check_path(diagram, dot=dot)  # fail before the analysis (and a renderer that cannot do it)
    elif dot is not None:
        raise CliError("--dot only applies to a diagram: add --diagram out.svg")
    cols = _columns(columns, fmt)
    model, shape, ex = _load(target, input_shape, debug=debug, quiet=quiet or fmt != "table",
                             meta=not check_init and weights is None and trace_mode != "make_fx")
    _check_leaves(model, leaves)
    # weights: loaded into a copy by analyze, so the init check sees the trained weights too
    lay: Any = layout
    if layout is not None and "," in layout:  # one per input; an empty entry is inferred
        lay = tuple(p.strip() or None for p in layout.split(","))
    report = run(model, shape, example_inputs=ex, strict=strict, leaf_modules=leaves, check_init=check_init,
                 trace=trace_mode, weights=weights, layout=lay)
    keep = {report.node_name(n) for n in nodes}  # fails early on unknown names
    if quiet:
        pass
    elif fmt == "json":
        d = report.to_dict()
        if nodes:
            d["nodes"] = [x for x in d["nodes"] if x["name"] in keep]
            d["modules"] = {k: v for k, v in d["modules"].items() if v["node"] in keep and k in nodes}
        click.echo(json.dumps(d, indent=2))
    else:
        click.echo(report.table(list(nodes) if nodes else None, depth=depth, columns=cols,
                                width=_terminal_width() if fmt == "table" else None, format=fmt).rstrip("\n"))
    if diagram is not None:
        from rfscope.export import render

        message = render(report, diagram, depth=depth, rankdir=rankdir, dot=dot).message
        if not quiet:
            click.echo(message, err=True)
    if check_init:
        findings = report.findings or []
        if fmt != "json" and not quiet:  # after the table; on stderr when stdout is csv, markdown or html
            err = fmt != "table"
            click.echo("", err=err)
            click.echo("\n".join(str(f) for f in findings) if findings else "init check: no findings", err=err)
        if any(f.severity == "error" for f in findings):
            raise click.exceptions.Exit(1)


def _columns(columns: str | None, fmt: str) -> tuple[str, ...] | None:
    """``--columns`` as column names (a one-line error naming the valid ones)."""
    if columns is None:
        return None
    if fmt == "json":
        raise CliError("--columns applies to the table formats (table, csv, markdown, html), not json")
    from rfscope.report import parse_columns

    try:
        return parse_columns(columns)
    except ValueError as e:
        raise CliError(f"--columns: {e}") from None


def _terminal_width() -> int | None:
    """The terminal's width when printing to one (or when ``COLUMNS`` is set), else ``None``: no limit."""
    import os
    import shutil

    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


main.add_command(probe)  # its options and body live with the probe (rfscope.probe.command)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())
