"""The ``rfscope probe`` command: its options and its body.

:mod:`rfscope.cli` adds :data:`probe` to the ``rfscope`` group; ``python -m rfscope.probe ARGS``
runs it alone through :func:`standalone` (handy under ``torchrun -m``).  Shared command-line
pieces (one-line errors, Ctrl-C, ``--input-shape``) come from :mod:`rfscope.cli_support`.
This module imports torch only when the command runs, so ``rfscope --help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from rfscope.cli_support import CONTEXT_SETTINGS, CliError, InterruptibleCommand, handle_errors, parse_shape

if TYPE_CHECKING:
    import torch

__all__ = ["probe", "run_probe", "standalone"]


def _dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[name]


def _shape(target_shape: str | None, lm: Any, x: torch.Tensor | None) -> tuple[int, ...]:
    import torch

    if target_shape:
        return parse_shape(target_shape)
    if x is not None:
        return (1, *x.shape[1:])
    if lm.input_shape is not None:
        return tuple(lm.input_shape)
    ex = lm.example_inputs
    if ex and isinstance(ex[0], torch.Tensor) and ex[0].dim() >= 3:
        return (1, *ex[0].shape[1:])
    raise CliError(f"no input shape: pass --input-shape C,H,W (e.g. 3,224,224) or define input_shape in {lm.source}")


@click.command("probe", cls=InterruptibleCommand, context_settings=CONTEXT_SETTINGS)
@click.argument("target")
@click.option("--mode", type=click.Choice(["exact", "erf"]), default="exact", show_default=True,
              help="exact: check the static RF with a linearised float64 copy; erf: effective RF.")
@click.option("--node", "nodes", multiple=True,
              help="Module path or node to probe (repeatable; erf: the nodes share the forward passes).")
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
@click.option("--out", "out_dir",
              help="ERF: output folder for erf.npy, erf.json, erf.png (several nodes: erf_NODE.* and erf_grid.png).")
@click.option("--cmap", default="cividis", show_default=True,
              help="ERF: matplotlib colour map of the figures (sequential, colour-blind safe by default).")
@click.option("--dpi", type=click.IntRange(10, 2400), default=150, show_default=True, help="ERF: figure dpi.")
@click.option("--image-format", "image_format", type=click.Choice(["png", "svg", "pdf"]), default="png",
              show_default=True, help="ERF: figure format (erf.png, erf.svg or erf.pdf).")
@click.option("--caption/--no-caption", default=True, show_default=True,
              help="ERF: the conventions text under the figure.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--no-grow", is_flag=True, help="Exact: keep the input size even if units touch the border.")
@click.option("--quiet", "--no-progress", "quiet", is_flag=True, help="No progress bar (exact and erf).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="ERF: load this state-dict checkpoint (weights_only=True) into a copy of the model first.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def probe(target: str, mode: str, nodes: tuple[str, ...], input_shape: str | None, samples: int,
          inputs_path: str | None, image_dir: str | None, device: str, dtype: str | None, batch_size: int | None,
          reduction: str, seed: int, out_dir: str | None, cmap: str, dpi: int, image_format: str, caption: bool,
          fmt: str, no_grow: bool, quiet: bool, weights: str | None, debug: bool) -> None:
    """Gradient probe of TARGET: exact RF validation (exit 1 on a disagreement) or the ERF."""
    if samples < 1:
        raise CliError(f"--samples must be at least 1 (got {samples})")
    if batch_size is not None and batch_size < 1:
        raise CliError(f"--batch-size must be at least 1 (got {batch_size})")
    status = run_probe(target, mode, nodes, input_shape, samples, inputs_path, image_dir, device, dtype,
                       batch_size, reduction, seed, out_dir, fmt, not no_grow, quiet, weights=weights, cmap=cmap,
                       dpi=dpi, image_format=image_format, caption=caption)
    if status:
        raise click.exceptions.Exit(status)


def standalone(args: Sequence[str] | None = None) -> None:
    """``python -m rfscope.probe ARGS``: the probe command alone, as ``rfscope probe ARGS``
    (same options, exit statuses and one-line errors); exits the process with its status."""
    probe.main(list(args) if args is not None else None, prog_name="rfscope probe")


def run_probe(
    target: str, mode: str, nodes: Sequence[str], input_shape: str | None, samples: int,
    inputs_path: str | None, image_dir: str | None, device: str, dtype: str | None, batch_size: int | None,
    reduction: str, seed: int, out_dir: str | None, fmt: str, grow: bool, quiet: bool,
    weights: str | None = None, *, cmap: str = "cividis", dpi: int = 150, image_format: str = "png",
    caption: bool = True,
) -> int:
    """Run one probe and print its result; returns the exit status (1 when a node disagrees)."""
    from rfscope.loader import load_model
    from rfscope.probe import erf, load_tensors, validate
    from rfscope.probe.effective import save_results
    from rfscope.probe.graph import ProbeError
    from rfscope.probe.runtime import dist_info, init_from_env

    if inputs_path and image_dir:
        raise CliError("give --inputs or --image-dir, not both")
    if mode == "erf" and not out_dir:
        raise CliError("--mode erf writes erf.npy/erf.json/erf.png (erf_NODE.* for several nodes): pass --out DIR")
    if mode == "exact" and (inputs_path or image_dir):
        raise CliError("--inputs/--image-dir are for --mode erf; the exact probe uses an all-ones input")
    if mode == "erf" and out_dir:
        from rfscope.export.files import check_output_dir
        from rfscope.probe.effective import output_files

        try:
            import matplotlib
        except ImportError:  # no figures will be written (save says so)
            pass
        else:
            if cmap not in matplotlib.colormaps:
                raise CliError(f"--cmap {cmap}: not a matplotlib colour map (e.g. cividis, viridis, magma)")
        # fail before the model is even loaded
        check_output_dir(out_dir, output_files(list(nodes) or ["output"], image_format), "--out")
    lm = load_model(target)
    if weights is not None:  # trained weights matter for the ERF; the exact probe linearises them away
        from rfscope.weights import load_weights

        lm.model = load_weights(lm.model, weights)
    x = load_tensors(inputs_path) if inputs_path else None
    shape = _shape(input_shape, lm, x)
    if x is not None and tuple(x.shape[1:]) != tuple(shape[1:]):
        raise ProbeError(f"--inputs tensors have shape {tuple(x.shape)}, the model input is {shape[1:]}")

    if mode == "exact":
        if dtype == "bfloat16":
            raise CliError("--mode exact needs float64 (or float32): bfloat16 would round contributions to zero")
        dt = _dtype(dtype or "float64")
        res = validate(lm.model, None, list(nodes) or None, shape, device=device, dtype=dt,
                       batch_size=batch_size or 4, grow=grow, progress=not quiet)
        click.echo(json.dumps(res.to_dict(), indent=2) if fmt == "json" else res.table())
        return 0 if res.ok else 1

    desc = None
    images = None
    if image_dir:
        from rfscope.probe.inputs import NORMALISATION, ImageFolder

        images = ImageFolder(image_dir, shape[1:], limit=samples)  # read batch by batch
        desc = f"{len(images)} images from {image_dir} (resized, {NORMALISATION})"
    elif x is not None:
        desc = f"tensors from {inputs_path}"
    init_from_env()
    rs = erf(lm.model, node=list(nodes) or ["output"], input_shape=shape, samples=samples,
            inputs=images if image_dir else x,
            device=device, dtype=_dtype(dtype or "float32"), batch_size=batch_size or 8, progress=not quiet,
            reduction=reduction, seed=seed, inputs_desc=desc)
    if dist_info()[0] != 0:
        return 0
    assert out_dir is not None
    paths = save_results(rs, out_dir, cmap=cmap, dpi=dpi, fmt=image_format, caption=caption)
    if fmt == "json":  # one node: its erf.json; several: a list of them
        click.echo(json.dumps(rs[0].to_dict() if len(rs) == 1 else [r.to_dict() for r in rs], indent=2))
    else:
        click.echo("\n\n".join(r.summary() for r in rs))
        click.echo("wrote " + ", ".join(str(p) for p in paths))
    return 0
