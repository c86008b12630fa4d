"""The body of ``rfscope probe`` (the click command in :mod:`rfscope.cli` only parses options)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import torch

from rfscope.probe.graph import ProbeError

__all__ = ["run_probe"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _shape(target_shape: str | None, lm: Any, x: torch.Tensor | None) -> tuple[int, ...]:
    from rfscope.cli import CliError, parse_shape

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


def run_probe(
    target: str, mode: str, nodes: Sequence[str], input_shape: str | None, samples: int,
    inputs_path: str | None, image_dir: str | None, device: str, dtype: str | None, batch_size: int | None,
    reduction: str, seed: int, out_dir: str | None, fmt: str, grow: bool, quiet: bool,
    weights: str | None = None,
) -> int:
    """Run one probe and print its result; returns the exit status (1 when a node disagrees)."""
    from rfscope.cli import CliError
    from rfscope.loader import load_model
    from rfscope.probe import erf, load_tensors, validate
    from rfscope.probe.runtime import dist_info, init_from_env

    if inputs_path and image_dir:
        raise CliError("give --inputs or --image-dir, not both")
    if mode == "erf" and not out_dir:
        raise CliError("--mode erf writes erf.npy/erf.json/erf.png: pass --out DIR")
    if mode == "exact" and (inputs_path or image_dir):
        raise CliError("--inputs/--image-dir are for --mode erf; the exact probe uses an all-ones input")
    if mode == "erf" and len(nodes) > 1:
        raise CliError("--mode erf probes one --node at a time")
    if mode == "erf" and out_dir:
        from rfscope.export.files import check_output_dir
        from rfscope.probe.effective import OUTPUT_FILES

        check_output_dir(out_dir, OUTPUT_FILES, "--out")  # fail before the model is even loaded
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
        dt = _DTYPES[dtype or "float64"]
        res = validate(lm.model, None, list(nodes) or None, shape, device=device, dtype=dt,
                       batch_size=batch_size or 4, grow=grow)
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
    r = erf(lm.model, node=nodes[0] if nodes else "output", input_shape=shape, samples=samples,
            inputs=images if image_dir else x,
            device=device, dtype=_DTYPES[dtype or "float32"], batch_size=batch_size or 8, progress=not quiet,
            reduction=reduction, seed=seed, inputs_desc=desc)
    if dist_info()[0] != 0:
        return 0
    assert out_dir is not None
    paths = r.save(out_dir)
    if fmt == "json":
        click.echo(json.dumps(r.to_dict(), indent=2))
    else:
        click.echo(r.summary())
        click.echo("wrote " + ", ".join(str(p) for p in paths))
    return 0
