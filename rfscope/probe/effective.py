"""Effective receptive field (Luo et al., NeurIPS 2016) of one node of the model as given.

For each sample, the gradient of the node's centre unit (summed over channels)
with respect to the input; samples are batched (one forward and one input-only
backward per batch; parameters never require grad).  Reduction, stated in every
output: ``"clip"`` (default, RepLKNet): negative gradients clipped to 0, then
summed over input channels and samples; ``"abs"`` (Luo et al.): ``|grad|`` summed
the same way.  The map is a sum, not a mean.  Under ``torchrun`` (an initialised
process group) each rank takes every ``world_size``-th batch and the sums are
all-reduced, so every rank returns the whole map.

Samples stream: batches are drawn (or sliced) one at a time, a few ahead, so memory
is bounded by the batch size whatever ``samples`` is.  A NaN or infinite gradient,
probed unit or map raises :class:`NonFiniteError` naming the first node that made
non-finite values.  Outputs are written atomically (:mod:`rfscope.export.files`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import textwrap
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from rfscope.core.locks import running
from rfscope.core.registry import Registry
from rfscope.core.state import Global, TensorRF
from rfscope.pipeline import analyze
from rfscope.probe.graph import ProbeError, check_trace_path, materialise, select_outputs
from rfscope.probe.inputs import ImageFolder, random_chunk
from rfscope.probe.metrics import area_ratios, erf_extent, gaussian_sigma, support
from rfscope.probe.plot import Heatmap, heatmap_png
from rfscope.probe.runtime import Progress, all_reduce_sum, dist_info, resolve_device
from rfscope.probe.units import axis_extents, layout_of, unit_mask
from rfscope.report import Report
from rfscope.trace.runtime import deep_entry, keeps_rng_state

__all__ = ["erf", "ERFResult", "REDUCTIONS", "NonFiniteError", "OUTPUT_FILES"]

#: The files :meth:`ERFResult.save` writes (the PNG only with matplotlib).
OUTPUT_FILES = ("erf.npy", "erf.json", "erf.png")

SIGMA_DEFINITION = ("per axis, standard deviation (pixels) of the raw map taken as a distribution: "
                    "second moment of its marginal about the centroid")
EXTENT_DEFINITION = ("per axis, min(4*sigma, support) pixels: the +-2 sigma box about the centroid, "
                     "clipped to the support (first to last non-zero position of the marginal)")
RATIO_DEFINITION = "erf_extent / static RF size, per axis"


class NonFiniteError(ProbeError):
    """The ERF gradient, the probed unit or the map has NaN/inf values; ``node`` made them first.

    ``node`` is the fx node name (``None`` when no single node could be named),
    ``phase`` is ``"inputs"``, ``"forward"``, ``"backward"`` or ``"map"``.
    """

    def __init__(self, message: str, node: str | None = None, phase: str = "map") -> None:
        super().__init__(message)
        self.node = node
        self.phase = phase

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
    #: per axis, the map's standard deviation about its centroid (pixels; NaN for an all-zero map)
    sigma: tuple[float, ...]
    #: per axis, min(4 sigma, support) (pixels)
    erf_extent: tuple[float, ...]
    #: per axis, first to last non-zero position of the map's marginal (pixels)
    support: tuple[int, ...]
    erf_rf_ratio: tuple[float | None, ...]
    bfloat16_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``erf.json`` (``docs/erf.schema.json``)."""
        from rfscope.report import SCHEMA_VERSION, versions

        return {
            "schema_version": SCHEMA_VERSION,
            "versions": versions(),
            **self.conventions,
            "rf": self.rf,
            "square_center": list(self.center),
            "area_ratio": self.area_ratio,
            "area_ratio_definition": "RepLKNet: log10(x+1)/max, smallest centred odd square whose sum is "
                                     "strictly above t of the total, side^2/(H*W)",
            "sigma": [_num(s) for s in self.sigma],
            "sigma_definition": SIGMA_DEFINITION,
            "erf_extent": [_num(s) for s in self.erf_extent],
            "erf_extent_definition": EXTENT_DEFINITION,
            "support": list(self.support),
            "erf_rf_ratio": list(self.erf_rf_ratio),
            "erf_rf_ratio_definition": RATIO_DEFINITION,
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
        lines.append("  sigma per axis (moments about the centroid): " + ", ".join(f"{s:.2f}" for s in self.sigma)
                     + "   support: " + ", ".join(map(str, self.support)))
        lines.append("  ERF/RF (min(4 sigma, support) / RF size): "
                     + ", ".join("-" if r is None else f"{r:.3f}" for r in self.erf_rf_ratio))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def heatmap(self) -> Heatmap:
        """What ``erf.png`` shows (:mod:`rfscope.probe.plot`): the map, the static RF box, the centre, the text."""
        c = self.conventions
        ar = ", ".join(f"t={k}: " + ("-" if v is None else f"{100 * v['ratio']:.1f}%")
                       for k, v in self.area_ratio.items())
        caption = (
            f"reduction: {c['reduction']} ({c['reduction_definition']}); colour: log10(1+ERF)/max; "
            f"weights: {c['weights']}; inputs: {c['inputs']}; {c['dtype']} on {c['device']}. "
            f"Box: static RF of the centre unit ({self.rf.get('status')}), +: square centre. Area ratios {ar}."
        )
        title = (f"ERF of {c['label']} — input {'x'.join(map(str, c['input_shape'][1:]))}, "
                 f"{c['samples']} samples, {c['reduction']}")
        return Heatmap(values=self.map, center=self.center, window=self.rf.get("window"),
                       box_label=f"static RF {self.rf.get('size')}", title=title,
                       caption="\n".join(textwrap.wrap(caption, 110)))

    def save(self, out_dir: str | Path, png: bool = True) -> list[Path]:
        """Write ``erf.npy``, ``erf.json`` and (with matplotlib) ``erf.png`` into ``out_dir``, all or none.

        Every file is rendered in memory, staged next to its target and renamed only
        when all are written (:mod:`rfscope.export.files`), so a failure (full disk,
        Ctrl-C) leaves the previous run's files as they were.  A previous
        ``erf.png`` is removed when no PNG is written, so no file describes another run.
        """
        from rfscope.export.files import check_output_dir, staged

        d = check_output_dir(out_dir, OUTPUT_FILES, "--out")
        buf = io.BytesIO()
        np.save(buf, self.map)
        image = None
        if png:
            image = heatmap_png(self.heatmap())
        created = [p for p in (d, *d.parents) if not p.exists()]  # deepest first
        d.mkdir(parents=True, exist_ok=True)
        try:
            with staged() as stage:
                paths = [stage.write(d / "erf.npy", buf.getvalue()),
                         stage.write(d / "erf.json", json.dumps(self.to_dict(), indent=2).encode("utf-8"))]
                if image is not None:
                    paths.append(stage.write(d / "erf.png", image))
                else:
                    stage.remove(d / "erf.png")
        except BaseException:
            for p in created:  # a failed first run leaves no empty folders behind
                try:
                    p.rmdir()
                except OSError:
                    break
            raise
        return paths


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


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


@dataclass(frozen=True)
class _Chunks:
    """``(chunk index, start, count)`` of fixed global batches (independent of the world size), lazily.

    ``ks`` is a ``range`` of chunk indices (a rank's share is ``ks[rank::world]``), so
    a trillion samples cost no more memory than ten.
    """

    samples: int
    batch: int
    ks: range

    def chunk(self, k: int) -> tuple[int, int, int]:
        s = k * self.batch
        return k, s, min(self.batch, self.samples - s)

    def __len__(self) -> int:
        return len(self.ks)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return (self.chunk(k) for k in self.ks)

    def __getitem__(self, sl: slice) -> _Chunks:
        return _Chunks(self.samples, self.batch, self.ks[sl])

    def total(self) -> int:
        """Samples in these chunks (only the global last chunk can be short)."""
        last = -(-self.samples // self.batch) - 1
        short = self.batch - self.chunk(last)[2] if last in self.ks else 0
        return len(self.ks) * self.batch - short


def _chunks(samples: int, batch_size: int) -> _Chunks:
    """All chunks of ``samples`` in batches of ``batch_size``."""
    return _Chunks(samples, batch_size, range(-(-samples // batch_size)))


def _batches(
    chunks: Iterable[tuple[int, int, int]], inputs: torch.Tensor | ImageFolder | None, in_shape: Sequence[int],
    seed: int,
    device: torch.device,
) -> Generator[tuple[int, torch.Tensor], None, None]:
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

    todo = iter(chunks)
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    ahead: deque[tuple[int, Future[torch.Tensor]]] = deque()
    try:
        for c in todo:  # at most `workers` batches in flight: memory bounded by the batch size
            ahead.append((c[2], pool.submit(load, c)))
            if len(ahead) >= workers:
                break
        while ahead:
            n, fut = ahead.popleft()
            x = fut.result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append((nxt[2], pool.submit(load, nxt)))
            yield n, x.to(device, non_blocking=cuda)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _accumulate(
    gm: torch.fx.GraphModule, mask: torch.Tensor, chunks: Iterable[tuple[int, int, int]],
    inputs: torch.Tensor | ImageFolder | None,
    in_shape: Sequence[int], seed: int, device: torch.device, dtype: torch.dtype, reduction: str,
    progress: Progress | None,
) -> torch.Tensor:
    acc = torch.zeros(tuple(in_shape[2:]), dtype=torch.float64, device=device)
    sel = mask != 0
    # each batch's finiteness is checked one batch late, so the check never stalls a GPU's queue
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    for n, x0 in _batches(chunks, inputs, in_shape, seed, device):
        x = x0.to(dtype=dtype).requires_grad_(True)
        (out,) = gm(x)
        if not isinstance(out, torch.Tensor) or out.shape[0] != n:
            raise ProbeError("the probed node has no batch dimension; the ERF needs one")
        (g,) = torch.autograd.grad((out * mask).sum(), x)
        finite = torch.isfinite(g).all() & torch.isfinite(torch.where(sel, out.detach(), 0)).all()
        g = g.detach().to(torch.float64)
        g = g.clamp_min(0) if reduction == "clip" else g.abs() if reduction == "abs" else g * g
        acc += g.sum(dim=(0, 1))
        if pending is not None and not bool(pending[0]):
            raise _locate_non_finite(gm, pending[1].to(dtype=dtype), mask)
        pending = (finite, x0)
        if progress is not None:
            progress.update(n)
    if pending is not None and not bool(pending[0]):
        raise _locate_non_finite(gm, pending[1].to(dtype=dtype), mask)
    return acc


def _describe(n: fx.Node) -> str:
    what = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    return f"node {n.name!r} ({n.op} {what})"


def _non_finite(v: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
               for t in tree_leaves(v))


class _Recorder(fx.Interpreter):
    """Runs the probe graph keeping every node's value (one batch, for error reports only)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def _set_current_node(self, node: fx.Node) -> Any:
        # fx.Interpreter copies node meta into torch.fx.traceback's process-wide current_meta, which
        # a torch.export / make_fx trace in another thread would record (see rfscope.core.locks)
        return contextlib.nullcontext()

    def run_node(self, n: fx.Node) -> Any:
        v = super().run_node(n)
        self.values[n] = v
        return v


def _locate_non_finite(gm: fx.GraphModule, x: torch.Tensor, mask: torch.Tensor) -> NonFiniteError:
    """Rerun the batch node by node: the first node whose output, or whose backward, is not finite."""
    tail = ("the ERF would be meaningless; check the model, its weights (--weights) and the inputs, "
            "or probe an earlier --node")
    x = x.detach().requires_grad_(True)
    rec = _Recorder(gm)
    with torch.enable_grad(), running():
        (out,) = rec.run(x)
    for node, v in rec.values.items():
        if node.op != "output" and _non_finite(v):
            if node.op == "placeholder":
                return NonFiniteError(f"the input batch holds NaN or infinite values; {tail}", node.name, "inputs")
            return NonFiniteError(f"{_describe(node)} is the first to output NaN or infinite values; {tail}",
                                  node.name, "forward")
    tracked = [(n, v) for n, v in rec.values.items()
               if n.op != "output" and isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad((out * mask).sum(), [v for _, v in tracked], allow_unused=True)
    for (node, _), g in reversed(list(zip(tracked, grads, strict=True))):  # from the probed node back
        if g is not None and not bool(torch.isfinite(g).all()):
            users = [u for u in node.users if u.op != "output"]
            by = " / ".join(_describe(u) for u in users) if users else _describe(node)
            return NonFiniteError(
                f"the backward pass of {by} is the first to give NaN or infinite gradients "
                f"(to {node.name!r}); {tail}", users[0].name if len(users) == 1 else node.name, "backward")
    return NonFiniteError(f"the ERF gradient had NaN or infinite values that a rerun of the batch did not "
                          f"reproduce (nondeterministic kernels?); {tail}", None, "backward")


@deep_entry  # a model nested thousands of levels deep runs where the stack has room
@keeps_rng_state  # the model's own random draws (noise layers) must not move the user's generator
def erf(
    model: torch.nn.Module,
    node: str = "output",
    input_shape: Sequence[int] | None = None,
    samples: int = 32,
    inputs: torch.Tensor | ImageFolder | None = None,
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
    if isinstance(inputs, ImageFolder):  # read batch by batch
        samples = min(samples, len(inputs))
        inputs = inputs.subset(samples)
        shape: tuple[int, ...] = (1, *inputs.shape[1:])
    elif inputs is not None:
        if inputs.dim() < 3:
            raise ProbeError(f"inputs must be (N, C, *spatial), got shape {tuple(inputs.shape)}")
        samples = min(samples, inputs.shape[0]) if samples else inputs.shape[0]
        inputs = inputs[:samples].detach()  # a view: a memory-mapped file stays mapped
        shape = (1, *inputs.shape[1:])
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

    def run(dt: torch.dtype, which: Iterable[tuple[int, int, int]], prog: Progress | None) -> torch.Tensor:
        if dt not in graphs:
            graphs[dt] = select_outputs(materialise(report.gm, model, device=dev, dtype=dt), [name])
        mask = unit_mask(dims, out_shape, index, dtype=dt, device=dev)
        with running():  # the graph's modules run: not while torch.export traces in another thread
            return _accumulate(graphs[dt], mask, which, inputs, shape, seed, dev, dt, reduction, prog)

    prog = Progress(mine.total(), f"ERF {name}", enabled=progress and len(mine) > 1)
    try:
        acc = run(dtype, mine, prog)
    finally:
        prog.close()
    acc = all_reduce_sum(acc)
    m = acc.cpu().numpy()
    if not np.isfinite(m).all():
        raise NonFiniteError("the ERF map overflowed to infinity (every batch's gradient was finite); "
                             "use fewer --samples or --dtype float64", None, "map")
    ratios = area_ratios(m, centre)
    sig = gaussian_sigma(m)
    extent = erf_extent(m)
    sup = support(m)
    sizes = rf_desc.get("size")
    erf_rf = tuple(
        (e / sizes[a]) if sizes and sizes[a] and np.isfinite(e) else None for a, e in enumerate(extent)
    )
    check = None
    if dtype in (torch.bfloat16, torch.float16):
        first = chunks[:1]
        low = _sides(area_ratios(run(dtype, first, None).cpu().numpy(), centre))
        ref = _sides(area_ratios(run(torch.float32, first, None).cpu().numpy(), centre))
        diffs = {k: (None if low[k] is None or ref[k] is None else abs(int(low[k] or 0) - int(ref[k] or 0)))
                 for k in ref}
        agree = all(d is not None and d <= 2 for d in diffs.values())
        check = {"samples": first.total(), "float32_sides": ref, "low_precision_sides": low, "agree": agree}
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
        "input_shape": [1, *shape[1:]],  # batch 1, as in analyze's JSON; the sample count is "samples"
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
    return ERFResult(m, conventions, rf_desc, centre, ratios, sig, extent, sup, erf_rf, check, notes)
