"""Effective receptive field (Luo et al., NeurIPS 2016) of nodes of the model as given.

For each sample, the gradient of the node's centre unit (summed over channels)
with respect to the input; samples are batched (one forward and one input-only
backward per batch; parameters never require grad).  Reduction, stated in every
output: ``"clip"`` (default, RepLKNet): negative gradients clipped to 0, then
summed over input channels and samples; ``"abs"`` (Luo et al.): ``|grad|`` summed
the same way.  The map is a sum, not a mean.  Under ``torchrun`` (an initialised
process group) each rank takes every ``world_size``-th batch and the sums are
all-reduced, so every rank returns the whole map.  Several nodes share each batch's
forward pass (one input-only backward per node, ``retain_graph``), so ``erf(model,
node=["a", "b"])`` costs one forward per batch and returns the maps separate runs would.

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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

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
from rfscope.probe.plot import FORMATS, FigureOptions, Heatmap, grid_image, heatmap_image
from rfscope.probe.runtime import Progress, all_reduce_sum, dist_info, resolve_device
from rfscope.probe.units import axis_extents, layout_of, unit_mask
from rfscope.report import Report
from rfscope.trace.runtime import deep_entry, keeps_rng_state

__all__ = ["erf", "ERFResult", "REDUCTIONS", "NonFiniteError", "save_results", "plot_grid",
           "output_files"]

#: The files :meth:`ERFResult.save` writes for one node (the image only with matplotlib; ``erf.svg`` or
#: ``erf.pdf`` instead of ``erf.png`` with ``fmt=``).

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

    def heatmap(self, panel: bool = False) -> Heatmap:
        """What ``erf.png`` shows (:mod:`rfscope.probe.plot`): the map, the static RF box, the centre, the text.

        ``panel=True``: a grid panel's short title (the node, its static RF and its ERF numbers).
        """
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
        if panel:
            rf = "x".join(map(str, self.rf["size"])) if self.rf.get("size") else str(self.rf.get("status"))
            ext = "x".join("-" if not math.isfinite(e) else f"{e:.0f}" for e in self.erf_extent)
            ratio = "x".join("-" if r is None else f"{r:.2f}" for r in self.erf_rf_ratio)
            a99 = self.area_ratio.get("99%")
            title = (f"{c['label']}\nRF {rf}, ERF {ext} (ERF/RF {ratio})"
                     + ("" if a99 is None else f"\narea ratio 99%: {100 * a99['ratio']:.1f}%"))
        return Heatmap(values=self.map, center=self.center, window=self.rf.get("window"),
                       box_label=f"static RF {'x'.join(map(str, self.rf.get('size') or []))}", title=title,
                       caption="\n".join(textwrap.wrap(caption, 110)))

    def save(self, out_dir: str | Path, png: bool = True, *, cmap: str = FigureOptions.cmap,
             dpi: int = FigureOptions.dpi, fmt: str = FigureOptions.fmt, caption: bool = True) -> list[Path]:
        """Write ``erf.npy``, ``erf.json`` and (with matplotlib) ``erf.png`` into ``out_dir``, all or none.

        ``png=False`` writes no image; ``fmt`` ``"svg"`` or ``"pdf"`` writes ``erf.svg`` / ``erf.pdf``
        instead; ``cmap`` (a matplotlib colour map), ``dpi`` and ``caption`` style it
        (:class:`~rfscope.probe.plot.FigureOptions`).  Every file is rendered in memory, staged
        next to its target and renamed only when all are written (:mod:`rfscope.export.files`),
        so a failure (full disk, Ctrl-C) leaves the previous run's files as they were.  Images
        of this name in other formats, and a several-node run's ``erf_grid.*``, are removed, so
        no file describes another run.
        """
        return save_results([self], out_dir, png, cmap=cmap, dpi=dpi, fmt=fmt, caption=caption)


def _file_label(label: str) -> str:
    """A node's label as a file-name part: letters, digits, ``.``, ``-`` and ``_``."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label) or "_"


def output_files(labels: Sequence[str], fmt: str = "png") -> list[str]:
    """The file names a run over nodes ``labels`` writes: ``erf.npy``, ``erf.json``, ``erf.<fmt>`` for one
    node; ``erf_<label>.npy`` / ``.json`` / ``.<fmt>`` per node and ``erf_grid.<fmt>`` for several
    (labels with characters other than letters, digits, ``.-_`` get ``_`` there).

    >>> output_files(["layer4"])
    ['erf.npy', 'erf.json', 'erf.png']
    >>> output_files(["stage1", "stage2"], "svg")
    ['erf_stage1.npy', 'erf_stage1.json', 'erf_stage1.svg', 'erf_stage2.npy', 'erf_stage2.json', 'erf_stage2.svg', \
'erf_grid.svg']
    """
    stems = _stems(labels)
    names = [f"{st}.{ext}" for st in stems for ext in ("npy", "json", fmt)]
    return names + ([f"erf_grid.{fmt}"] if len(stems) > 1 else [])


def _stems(labels: Sequence[str]) -> list[str]:
    if len(labels) == 1:
        return ["erf"]
    stems = [f"erf_{_file_label(lb)}" for lb in labels]
    dup = sorted({st for st in stems if stems.count(st) > 1 or st == "erf_grid"})
    if dup:
        raise ProbeError(f"nodes {', '.join(labels)} would share the file names {', '.join(dup)}; "
                         "probe them in separate runs")
    return stems


def _grid_text(results: Sequence[ERFResult]) -> tuple[str, str]:
    c = results[0].conventions
    title = (f"ERF — input {'x'.join(map(str, c['input_shape'][1:]))}, {c['samples']} samples, "
             f"{c['reduction']}")
    caption = (f"reduction: {c['reduction']} ({c['reduction_definition']}); colour: log10(1+ERF)/max per panel; "
               f"weights: {c['weights']}; inputs: {c['inputs']}; {c['dtype']} on {c['device']}. "
               "Box: static RF of each node's centre unit, +: square centre.")
    return title, "\n".join(textwrap.wrap(caption, 150))


def plot_grid(results: Sequence[ERFResult], path: str | Path | None = None, *, cmap: str = FigureOptions.cmap,
              dpi: int = FigureOptions.dpi, fmt: str | None = None, caption: bool = True) -> bytes | Path | None:
    """Several nodes' ERFs side by side with one shared colour bar, each panel titled with its node and
    its RF/ERF numbers (:func:`rfscope.probe.plot.grid_figure`).

    With ``path`` the image is written there atomically (format from ``fmt`` or the path's suffix)
    and the path returned; without, its bytes.  ``None`` (with a message) without matplotlib.
    """
    from rfscope.export.files import write_file

    if fmt is None:
        fmt = Path(path).suffix.lstrip(".").lower() if path is not None and Path(path).suffix else "png"
    opts = FigureOptions(cmap=cmap, dpi=dpi, fmt=fmt, caption=caption)
    title, text = _grid_text(results)
    data = grid_image([r.heatmap(panel=True) for r in results], opts, title, text)
    if data is None or path is None:
        return data
    return write_file(path, data)


def save_results(results: Sequence[ERFResult], out_dir: str | Path, png: bool = True, *,
                 cmap: str = FigureOptions.cmap, dpi: int = FigureOptions.dpi, fmt: str = FigureOptions.fmt,
                 caption: bool = True, grid: bool = True) -> list[Path]:
    """Write every result's files (:func:`output_files`) into ``out_dir``, all or none (staged together).

    One result: ``erf.npy``, ``erf.json``, ``erf.<fmt>``.  Several: ``erf_<label>.*`` per node and
    ``erf_grid.<fmt>`` (``grid=True``, :func:`plot_grid`).  Images are written only with ``png=True``
    and matplotlib.  Files a run of the other kind, or of another image format, would have written
    for these names (``erf.*`` and ``erf_grid.*``, other formats' images) are removed, so no file
    describes another run.
    """
    from rfscope.export.files import check_output_dir, staged

    if not results:
        raise ProbeError("save_results needs at least one result")
    opts = FigureOptions(cmap=cmap, dpi=dpi, fmt=fmt, caption=caption)
    stems = _stems([r.conventions["label"] for r in results])
    d = check_output_dir(out_dir, output_files([r.conventions["label"] for r in results], fmt), "--out")
    files: dict[str, bytes | None] = {}
    for st, r in zip(stems, results, strict=True):
        buf = io.BytesIO()
        np.save(buf, r.map)
        files[f"{st}.npy"] = buf.getvalue()
        files[f"{st}.json"] = json.dumps(r.to_dict(), indent=2).encode("utf-8")
        image = heatmap_image(r.heatmap(), opts) if png else None
        for f in FORMATS:
            files[f"{st}.{f}"] = image if f == fmt else None
    several = len(results) > 1
    if several:
        title, text = _grid_text(results)
        image = grid_image([r.heatmap(panel=True) for r in results], opts, title, text) if png and grid else None
        for f in FORMATS:
            files[f"erf_grid.{f}"] = image if f == fmt else None
    stale = [f"erf.{ext}" for ext in ("npy", "json", *FORMATS)] if several else \
        [f"erf_grid.{f}" for f in FORMATS]
    for name in stale:
        files.setdefault(name, None)
    created = [p for p in (d, *d.parents) if not p.exists()]  # deepest first
    d.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    try:
        with staged() as stage:
            for name, data in files.items():
                if data is not None:
                    paths.append(stage.write(d / name, data))
                else:
                    stage.remove(d / name)
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
    gm: torch.fx.GraphModule, masks: Sequence[torch.Tensor], chunks: Iterable[tuple[int, int, int]],
    inputs: torch.Tensor | ImageFolder | None,
    in_shape: Sequence[int], seed: int, device: torch.device, dtype: torch.dtype, reduction: str,
    progress: Progress | None, locate: Callable[[int, torch.Tensor], NonFiniteError],
) -> list[torch.Tensor]:
    """One map per output of ``gm`` (its probed nodes, ``masks`` in order): one forward per batch, one
    input-only backward per node (the graph kept for the next node)."""
    accs = [torch.zeros(tuple(in_shape[2:]), dtype=torch.float64, device=device) for _ in masks]
    sels = [mask != 0 for mask in masks]
    # each batch's finiteness is checked one batch late, so the check never stalls a GPU's queue
    pending: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def check(p: tuple[list[torch.Tensor], torch.Tensor]) -> None:
        for k, ok in enumerate(p[0]):
            if not bool(ok):
                raise locate(k, p[1].to(dtype=dtype))

    for n, x0 in _batches(chunks, inputs, in_shape, seed, device):
        x = x0.to(dtype=dtype).requires_grad_(True)
        outs = gm(x)
        if any(not isinstance(out, torch.Tensor) or out.shape[0] != n for out in outs):
            raise ProbeError("the probed node has no batch dimension; the ERF needs one")
        finite = []
        for k, (out, mask) in enumerate(zip(outs, masks, strict=True)):
            (g,) = torch.autograd.grad((out * mask).sum(), x, retain_graph=k < len(masks) - 1)
            finite.append(torch.isfinite(g).all() & torch.isfinite(torch.where(sels[k], out.detach(), 0)).all())
            g = g.detach().to(torch.float64)
            g = g.clamp_min(0) if reduction == "clip" else g.abs() if reduction == "abs" else g * g
            accs[k] += g.sum(dim=(0, 1))
        del outs
        if pending is not None:
            check(pending)
        pending = (finite, x0)
        if progress is not None:
            progress.update(n)
    if pending is not None:
        check(pending)
    return accs


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


@overload
def erf(model: torch.nn.Module, node: str = ..., input_shape: Sequence[int] | None = ..., samples: int = ...,
        inputs: torch.Tensor | ImageFolder | None = ..., device: str | torch.device = ...,
        dtype: torch.dtype = ..., batch_size: int = ..., progress: bool = ..., *, reduction: str = ...,
        seed: int = ..., report: Report | None = ..., registry: Registry | None = ...,
        leaf_modules: Sequence[str] = ..., inputs_desc: str | None = ...) -> ERFResult: ...


@overload
def erf(model: torch.nn.Module, node: list[str] | tuple[str, ...], input_shape: Sequence[int] | None = ...,
        samples: int = ...,
        inputs: torch.Tensor | ImageFolder | None = ..., device: str | torch.device = ...,
        dtype: torch.dtype = ..., batch_size: int = ..., progress: bool = ..., *, reduction: str = ...,
        seed: int = ..., report: Report | None = ..., registry: Registry | None = ...,
        leaf_modules: Sequence[str] = ..., inputs_desc: str | None = ...) -> list[ERFResult]: ...


@deep_entry  # a model nested thousands of levels deep runs where the stack has room
@keeps_rng_state  # the model's own random draws (noise layers) must not move the user's generator
def erf(
    model: torch.nn.Module,
    node: str | Sequence[str] = "output",
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
) -> ERFResult | list[ERFResult]:
    """ERF of ``node`` (module path or fx node) for ``model`` as given (its weights, eval mode).

    ``node`` a list of names: one :class:`ERFResult` per node, in order, from shared forward
    passes (one per batch; one input-only backward per node), equal to separate runs with the
    same inputs and seed.

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
    >>> a, b = rfscope.probe.erf(net, node=["0", "1"], input_shape=(1, 1, 9, 9), samples=2, device="cpu",
    ...                          progress=False)
    >>> a.map[4, 3:6].tolist(), bool((b.map == r.map).all())
    ([2.0, 2.0, 2.0], True)
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
    single = isinstance(node, str)
    labels = [node] if isinstance(node, str) else list(node)
    if not labels:
        raise ProbeError("give at least one node")
    names = [_resolve(report, lb) for lb in labels]
    twice = sorted({lb for lb, nm in zip(labels, names, strict=True) if names.count(nm) > 1})
    if twice:
        raise ProbeError(f"{', '.join(repr(t) for t in twice)}: the same node asked twice")
    nsp = len(report.input_size)
    per_node = []  # (dims, out_shape, index, centre, rf_desc, notes)
    for lb, name in zip(labels, names, strict=True):
        rec = report.records[name]
        st = rec.state
        if not isinstance(st, TensorRF) or rec.shape is None:
            raise ProbeError(f"node {lb!r} is not a tensor that depends on the input")
        out_shape: tuple[int, ...] = tuple(rec.shape)
        dims = layout_of(st, out_shape, nsp)
        ext = axis_extents(dims, out_shape)
        index = {a: (m - 1) // 2 for a, m in ext.items()}
        per_node.append((dims, out_shape, index, *_centre_and_rf(report, name, index)))

    rank, world = dist_info()
    chunks = _chunks(samples, batch_size)
    mine = chunks[rank::world]

    graphs: dict[tuple[torch.dtype, tuple[str, ...]], torch.fx.GraphModule] = {}  # the check reuses them

    def graph(dt: torch.dtype, which: Sequence[str]) -> torch.fx.GraphModule:
        key = (dt, tuple(which))
        if key not in graphs:
            graphs[key] = select_outputs(materialise(report.gm, model, device=dev, dtype=dt), list(which))
        return graphs[key]

    def run(dt: torch.dtype, which: Iterable[tuple[int, int, int]], prog: Progress | None) -> list[torch.Tensor]:
        masks = [unit_mask(p[0], p[1], p[2], dtype=dt, device=dev) for p in per_node]

        def locate(k: int, x: torch.Tensor) -> NonFiniteError:  # rerun the batch for that node alone
            return _locate_non_finite(graph(dt, [names[k]]), x, masks[k])

        with running():  # the graph's modules run: not while torch.export traces in another thread
            return _accumulate(graph(dt, names), masks, which, inputs, shape, seed, dev, dt, reduction, prog,
                               locate)

    prog = Progress(mine.total(), f"ERF {', '.join(names)}", enabled=progress and len(mine) > 1)
    try:
        accs = run(dtype, mine, prog)
    finally:
        prog.close()
    firsts: list[np.ndarray] | None = None
    refs: list[np.ndarray] | None = None
    if dtype in (torch.bfloat16, torch.float16):
        first = chunks[:1]
        firsts = [a.cpu().numpy() for a in run(dtype, first, None)]
        refs = [a.cpu().numpy() for a in run(torch.float32, first, None)]
    results = []
    for k, (lb, name) in enumerate(zip(labels, names, strict=True)):
        _, _, index, centre, rf_desc, notes = per_node[k]
        m = all_reduce_sum(accs[k]).cpu().numpy()
        if not np.isfinite(m).all():
            raise NonFiniteError("the ERF map overflowed to infinity (every batch's gradient was finite); "
                                 "use fewer --samples or --dtype float64", None, "map")
        check = None
        if firsts is not None and refs is not None:
            check = _low_precision_check(firsts[k], refs[k], centre, chunks[:1].total(), dtype)
        results.append(_result(m, lb, name, index, centre, rf_desc, notes, check, nsp, shape, samples, inputs,
                               inputs_desc, seed, reduction, dev, dtype, world))
    return results[0] if single else results


def _low_precision_check(low_map: np.ndarray, ref_map: np.ndarray, centre: tuple[int, ...], n: int,
                         dtype: torch.dtype) -> dict[str, Any]:
    """bfloat16/float16 against float32 on the first batch: area-ratio sides within one step (± 2)."""
    low = _sides(area_ratios(low_map, centre))
    ref = _sides(area_ratios(ref_map, centre))
    diffs = {k: (None if low[k] is None or ref[k] is None else abs(int(low[k] or 0) - int(ref[k] or 0)))
             for k in ref}
    agree = all(d is not None and d <= 2 for d in diffs.values())
    if not agree:
        raise ProbeError(
            f"{str(dtype).replace('torch.', '')} ERF disagrees with float32 by more than one square step "
            f"(side differences {diffs}); use --dtype float32"
        )
    return {"samples": n, "float32_sides": ref, "low_precision_sides": low, "agree": agree}


def _result(m: np.ndarray, label: str, name: str, index: dict[int, int], centre: tuple[int, ...],
            rf_desc: dict[str, Any], notes: list[str], check: dict[str, Any] | None, nsp: int,
            shape: Sequence[int], samples: int, inputs: Any, inputs_desc: str | None, seed: int, reduction: str,
            dev: torch.device, dtype: torch.dtype, world: int) -> ERFResult:
    ratios = area_ratios(m, centre)
    sig = gaussian_sigma(m)
    extent = erf_extent(m)
    sup = support(m)
    sizes = rf_desc.get("size")
    erf_rf = tuple(
        (e / sizes[a]) if sizes and sizes[a] and np.isfinite(e) else None for a, e in enumerate(extent)
    )
    if inputs is None:
        desc = f"random standard normal, seed {seed}"
    else:
        desc = inputs_desc or "user tensors"
    conventions = {
        "node": name,
        "label": label,
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
