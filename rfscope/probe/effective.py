"""Effective receptive field (Luo et al., NeurIPS 2016) of one node of the model as given.

For each sample, the gradient of the node's centre unit (summed over channels)
with respect to the input; samples are batched (one forward and one input-only
backward per batch; parameters never require grad).  Reduction, stated in every
output: ``"clip"`` (default, RepLKNet): negative gradients clipped to 0, then
summed over input channels and samples; ``"abs"`` (Luo et al.): ``|grad|`` summed
the same way.  The map is a sum, not a mean.  Under ``torchrun`` (an initialised
process group) each rank takes every ``world_size``-th batch and the sums are
all-reduced, so every rank returns the whole map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import analyze
from ..registry import Registry
from ..report import Report
from ..state import Global, TensorRF
from .graph import ProbeError, check_trace_path, materialise, select_outputs
from .inputs import random_chunk
from .metrics import area_ratios, gaussian_fit_sigma, gaussian_sigma
from .runtime import Progress, all_reduce_sum, dist_info, resolve_device
from .units import axis_extents, layout_of, unit_mask

__all__ = ["erf", "ERFResult", "REDUCTIONS"]

REDUCTIONS = {
    "clip": "negative input gradients clipped to 0 (RepLKNet), summed over input channels and samples",
    "abs": "|input gradient| (Luo et al. 2016), summed over input channels and samples",
    "square": "squared input gradient (Luo et al. 2016, random-weight analysis), summed over input channels "
              "and samples",
}


@dataclass
class ERFResult:
    """An ERF map (``map``: spatial shape of the input, float64 sum) with its conventions and metrics."""

    map: np.ndarray
    conventions: dict[str, Any]
    rf: dict[str, Any]
    center: tuple[int, ...]
    area_ratio: dict[str, Any]
    sigma: tuple[float, ...]
    sigma_moments: tuple[float, ...]
    erf_rf_ratio: tuple[float | None, ...]
    bfloat16_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.conventions,
            "rf": self.rf,
            "square_center": list(self.center),
            "area_ratio": self.area_ratio,
            "area_ratio_definition": "RepLKNet: log10(x+1)/max, smallest centred odd square whose sum is "
                                     "strictly above t of the total, side^2/(H*W)",
            "sigma": list(self.sigma),
            "sigma_definition": "per axis, Gaussian fitted (least squares on log) to the core (>= e^-2 of the "
                                "peak) of the raw map's marginal, pixels",
            "sigma_moments": list(self.sigma_moments),
            "sigma_moments_definition": "per-axis standard deviation of the raw map taken as a distribution",
            "erf_rf_ratio": list(self.erf_rf_ratio),
            "erf_rf_ratio_definition": "4*sigma / static RF size, per axis",
            "bfloat16_check": self.bfloat16_check,
            "notes": self.notes,
        }

    def summary(self) -> str:
        c = self.conventions
        lines = [
            f"ERF of {c['label']} ({c['node']}), input {'x'.join(map(str, c['input_shape'][1:]))}, "
            f"{c['samples']} samples ({c['inputs']}), {c['dtype']} on {c['device']}",
            f"reduction: {c['reduction']} — {REDUCTIONS[c['reduction']]}",
            f"static RF: {self.rf.get('status')} size {self.rf.get('size')}, centre unit {c['centre_unit']}, "
            f"squares centred at {list(self.center)}",
        ]
        for k, v in self.area_ratio.items():
            lines.append(f"  area ratio t={k:>4}: " + ("-" if v is None else f"{100 * v['ratio']:.2f}% "
                                                        f"(side {v['side']})"))
        lines.append("  Gaussian sigma per axis (fit): " + ", ".join(f"{s:.2f}" for s in self.sigma)
                     + "   (moments: " + ", ".join(f"{s:.2f}" for s in self.sigma_moments) + ")")
        lines.append("  ERF/RF (4 sigma / RF size): "
                     + ", ".join("-" if r is None else f"{r:.3f}" for r in self.erf_rf_ratio))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self, out_dir: str | Path, png: bool = True) -> list[Path]:
        """Write ``erf.npy``, ``erf.json`` and (with matplotlib) ``erf.png`` into ``out_dir``."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = [d / "erf.npy", d / "erf.json"]
        np.save(paths[0], self.map)
        paths[1].write_text(json.dumps(self.to_dict(), indent=2))
        if png:
            from .plot import save_heatmap

            p = save_heatmap(self, d / "erf.png")
            if p is not None:
                paths.append(p)
        return paths


def _centre_and_rf(report: Report, name: str, index: dict[int, int]) -> tuple[tuple[int, ...], dict[str, Any],
                                                                                 list[str]]:
    """Square centre (static RF centre of the probed unit, floored) and the RF description."""
    size = report.input_size
    rf = report.rf(name)
    notes: list[str] = []
    desc: dict[str, Any] = {"status": rf.status}
    if rf.status == "unknown":
        notes.append(f"static RF unknown ({rf.reason}); squares centred at the input centre (H//2, W//2)")
        desc["reason"] = rf.reason
        return tuple(n // 2 for n in size), desc, notes
    st = report.records[name].state
    assert isinstance(st, TensorRF)
    centre, windows, sizes = [], [], []
    for a, n in enumerate(size):
        ax = st.axes[a]
        local = ax.local if isinstance(ax, Global) else ax
        if local is None:
            centre.append(n // 2)
            windows.append([0, n - 1])
            sizes.append(n)
            notes.append(f"axis {a} is global with no local path; squares centred at the input centre")
            continue
        w = local.window(index.get(a, 0))
        centre.append(min(n - 1, max(0, (w.lo + w.hi) // 2)))
        windows.append([w.lo, w.hi])
        sizes.append(w.size)
    if rf.status == "global":
        notes.append("static RF is global; the box shows the local RF (spatially local paths)")
    desc.update({"size": sizes, "window": windows})
    return tuple(centre), desc, notes


def _resolve(report: Report, node: str) -> str:
    """fx node name of a module path / node; the graph's ``output`` means the value it returns."""
    name = report.node_name(node)
    return report.output_node if report.records[name].op == "output" else name


def _sides(ratios: dict[str, dict[str, float | int] | None]) -> dict[str, int | None]:
    return {k: (None if v is None else int(v["side"])) for k, v in ratios.items()}


def _chunks(samples: int, batch_size: int) -> list[tuple[int, int, int]]:
    """``(chunk index, start, count)`` for fixed global batches (independent of the world size)."""
    out = []
    for k, s in enumerate(range(0, samples, batch_size)):
        out.append((k, s, min(batch_size, samples - s)))
    return out


def _batches(
    chunks: Iterable[tuple[int, int, int]], inputs: torch.Tensor | None, in_shape: Sequence[int], seed: int,
    device: torch.device,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(count, batch on device)`` per chunk; the next chunks are drawn and copied while this one runs.

    Random inputs are drawn on the CPU (so a seed gives the same samples on every device and world
    size) by up to four worker threads (one per CPU core); on CUDA they land in pinned memory and are
    copied without blocking, so drawing, copying and the model's forward/backward overlap instead of
    taking turns.
    """
    cuda = device.type == "cuda"

    def load(c: tuple[int, int, int]) -> torch.Tensor:
        k, s, n = c
        x = inputs[s:s + n] if inputs is not None else random_chunk(k, n, in_shape[1:], seed)
        return x.pin_memory() if cuda and x.device.type == "cpu" else x

    todo = list(chunks)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = [pool.submit(load, c) for c in todo[:workers]]
        for i, c in enumerate(todo):
            x = ahead.pop(0).result()
            if i + workers < len(todo):
                ahead.append(pool.submit(load, todo[i + workers]))
            yield c[2], x.to(device, non_blocking=cuda)


def _accumulate(
    gm: torch.fx.GraphModule, mask: torch.Tensor, chunks: Iterable[tuple[int, int, int]], inputs: torch.Tensor | None,
    in_shape: Sequence[int], seed: int, device: torch.device, dtype: torch.dtype, reduction: str,
    progress: Progress | None,
) -> torch.Tensor:
    acc = torch.zeros(tuple(in_shape[2:]), dtype=torch.float64, device=device)
    for n, x0 in _batches(chunks, inputs, in_shape, seed, device):
        x = x0.to(dtype=dtype).requires_grad_(True)
        (out,) = gm(x)
        if not isinstance(out, torch.Tensor) or out.shape[0] != n:
            raise ProbeError("the probed node has no batch dimension; the ERF needs one")
        (g,) = torch.autograd.grad((out * mask).sum(), x)
        g = g.detach().to(torch.float64)
        g = g.clamp_min(0) if reduction == "clip" else g.abs() if reduction == "abs" else g * g
        acc += g.sum(dim=(0, 1))
        if progress is not None:
            progress.update(n)
    return acc


def erf(
    model: torch.nn.Module,
    node: str = "output",
    input_shape: Sequence[int] | None = None,
    samples: int = 32,
    inputs: torch.Tensor | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    progress: bool = True,
    *,
    reduction: str = "clip",
    seed: int = 0,
    report: Report | None = None,
    registry: Registry | None = None,
    leaf_modules: Sequence[str] = (),
    inputs_desc: str | None = None,
) -> ERFResult:
    """ERF of ``node`` (module path or fx node) for ``model`` as given (its weights, eval mode).

    Inputs: ``inputs`` (``(N, C, *spatial)``; the first ``samples`` are used) or
    ``samples`` standard-normal tensors of ``input_shape`` (``(N, C, *spatial)``,
    N ignored), reproducible from ``seed`` whatever the world size.  ``dtype``
    ``torch.bfloat16`` is accepted only when it agrees with float32 within one
    square step (side ± 2) of every area ratio on the first batch; otherwise a
    :class:`ProbeError` is raised.  The model is never touched (a copy of the
    analysed graph with copies of its weights runs).

    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Conv2d(1, 1, 3, bias=False), nn.Conv2d(1, 1, 3, bias=False))
    >>> for c in net: _ = nn.init.ones_(c.weight)
    >>> r = rfscope.probe.erf(net, input_shape=(1, 1, 9, 9), samples=2, device="cpu", progress=False)
    >>> r.map[2:7, 4].tolist()  # 2 samples x (1 2 3 2 1) x 3 (the centre row's weight)
    [6.0, 12.0, 18.0, 12.0, 6.0]
    >>> r.area_ratio["99%"]["side"]
    5
    """
    if reduction not in REDUCTIONS:
        raise ProbeError(f"reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ProbeError(f"dtype {dtype}: use float32, float64 or bfloat16")
    if batch_size < 1 or samples < 1:
        raise ProbeError("samples and batch_size must be at least 1")
    dev = resolve_device(device)
    if inputs is not None:
        if inputs.dim() < 3:
            raise ProbeError(f"inputs must be (N, C, *spatial), got shape {tuple(inputs.shape)}")
        samples = min(samples, inputs.shape[0]) if samples else inputs.shape[0]
        inputs = inputs[:samples].detach()
        shape: tuple[int, ...] = (1, *inputs.shape[1:])
    elif input_shape is not None:
        shape = (1, *tuple(int(s) for s in input_shape)[1:])
    elif report is not None:
        shape = (1, *report.input_shape[1:])
    else:
        raise ProbeError("give input_shape=(N, C, *spatial), inputs= or report=")
    if report is None or tuple(report.input_shape[1:]) != shape[1:]:
        report = analyze(model, shape, registry=registry, leaf_modules=leaf_modules)
    check_trace_path(report.trace_path)
    placeholders = [n for n in report.gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ProbeError(f"the probe handles single-input models; this one takes {len(placeholders)} inputs")
    name = _resolve(report, node)
    rec = report.records[name]
    st = rec.state
    if not isinstance(st, TensorRF) or rec.shape is None:
        raise ProbeError(f"node {node!r} is not a tensor that depends on the input")
    nsp = len(report.input_size)
    out_shape: tuple[int, ...] = tuple(rec.shape)
    dims = layout_of(st, out_shape, nsp)
    ext = axis_extents(dims, out_shape)
    index = {a: (m - 1) // 2 for a, m in ext.items()}
    centre, rf_desc, notes = _centre_and_rf(report, name, index)

    rank, world = dist_info()
    chunks = _chunks(samples, batch_size)
    mine = chunks[rank::world]

    graphs: dict[torch.dtype, torch.fx.GraphModule] = {}  # the low-precision check reuses the main copy

    def run(dt: torch.dtype, which: Sequence[tuple[int, int, int]], prog: Progress | None) -> torch.Tensor:
        if dt not in graphs:
            graphs[dt] = select_outputs(materialise(report.gm, model, device=dev, dtype=dt), [name])
        mask = unit_mask(dims, out_shape, index, dtype=dt, device=dev)
        return _accumulate(graphs[dt], mask, which, inputs, shape, seed, dev, dt, reduction, prog)

    prog = Progress(sum(c[2] for c in mine), f"ERF {name}", enabled=progress and len(mine) > 1)
    try:
        acc = run(dtype, mine, prog)
    finally:
        prog.close()
    acc = all_reduce_sum(acc)
    m = acc.cpu().numpy()
    ratios = area_ratios(m, centre)
    sig_m = gaussian_sigma(m)
    sig = tuple(f if np.isfinite(f) else mo for f, mo in zip(gaussian_fit_sigma(m), sig_m, strict=True))
    sizes = rf_desc.get("size")
    erf_rf = tuple(
        (4 * s / sizes[a]) if sizes and sizes[a] and np.isfinite(s) else None for a, s in enumerate(sig)
    )
    check = None
    if dtype in (torch.bfloat16, torch.float16):
        first = chunks[:1]
        low = _sides(area_ratios(run(dtype, first, None).cpu().numpy(), centre))
        ref = _sides(area_ratios(run(torch.float32, first, None).cpu().numpy(), centre))
        diffs = {k: (None if low[k] is None or ref[k] is None else abs(int(low[k] or 0) - int(ref[k] or 0)))
                 for k in ref}
        agree = all(d is not None and d <= 2 for d in diffs.values())
        check = {"samples": first[0][2], "float32_sides": ref, "low_precision_sides": low, "agree": agree}
        if not agree:
            raise ProbeError(
                f"{str(dtype).replace('torch.', '')} ERF disagrees with float32 by more than one square step "
                f"(side differences {diffs}); use --dtype float32"
            )
    if inputs is None:
        desc = f"random standard normal, seed {seed}"
    else:
        desc = inputs_desc or "user tensors"
    conventions = {
        "node": name,
        "label": node,
        "input_shape": [samples, *shape[1:]],
        "samples": samples,
        "inputs": desc,
        "weights": "the model's own parameters (a copy), eval mode",
        "unit": "centre unit " + str([index.get(a) for a in range(nsp)]) + ", summed over channels",
        "centre_unit": [index.get(a) for a in range(nsp)],
        "reduction": reduction,
        "reduction_definition": REDUCTIONS[reduction],
        "map": "sum over samples (not a mean)",
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "world_size": world,
    }
    return ERFResult(m, conventions, rf_desc, centre, ratios, sig, sig_m, erf_rf, check, notes)
