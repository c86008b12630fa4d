"""ERF figures (matplotlib, Agg): RepLKNet-transformed map, static RF box, centre, colour bar.

It draws plain data (a :class:`Heatmap`: an array, positions and text) and knows nothing of
:class:`~rfscope.probe.effective.ERFResult`, which builds the :class:`Heatmap` and its wording.

Options (:class:`FigureOptions`): a colour map (default ``cividis``: sequential, colour-blind
safe, zero a dark unsaturated blue-grey), dpi, format (``png``, ``svg`` or ``pdf``) and the
caption on or off.  Axes are labelled in input pixels.  The static RF box is drawn edge by
edge: an edge the input clips is drawn dashed on the input's border (never hidden by the
axes) and the legend says ``static RF ..., clipped to the input``.

:func:`heatmap_figure` / :func:`grid_figure` return the matplotlib figure (for tests and
further styling); :func:`heatmap_image` / :func:`grid_image` render it to bytes.
matplotlib is a dependency of rfscope; should it be missing (``pip install matplotlib``), the
image functions warn and return ``None``.  Images are rendered in memory and written with
:mod:`rfscope.export.files`.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rfscope.probe.metrics import replknet_transform

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Heatmap", "FigureOptions", "FORMATS", "DEFAULT_CMAP", "heatmap_figure", "heatmap_image",
           "grid_figure", "grid_image"]

#: image formats matplotlib writes without system tools
FORMATS = ("png", "svg", "pdf")
#: sequential and colour-blind safe (Nuñez et al. 2018); zero is a dark, unsaturated blue
DEFAULT_CMAP = "cividis"
#: the static RF marker's colour (not in cividis/viridis, so it stands out on every value)
MARKER = "tab:red"
CLIPPED_NOTE = "clipped to the input"
COLOUR_LABEL = "log10(1+ERF)/max"
#: inches of margin around the drawn figure (saved with a tight bounding box)
PAD = 0.05


@dataclass(frozen=True)
class Heatmap:
    """What the figure shows, as plain data."""

    #: the raw map (1-, 2- or 3-D: a 3-D map is drawn as its slice through ``center``), drawn as
    #: :func:`~rfscope.probe.metrics.replknet_transform` of it
    values: np.ndarray
    #: the position marked with ``+`` (a dotted line in 1-D)
    center: tuple[int, ...]
    #: the static RF box: per axis, the first and last input position (may run past the input); ``None``: no box
    window: Sequence[Sequence[int]] | None
    #: the box's legend, e.g. ``"static RF (7, 7)"``
    box_label: str
    title: str
    #: the text under the plot (already wrapped)
    caption: str


@dataclass(frozen=True)
class FigureOptions:
    """How a figure looks and is written: ``cmap`` (a matplotlib colour map name), ``dpi``,
    ``fmt`` (one of :data:`FORMATS`) and ``caption`` (the text under the plot, on or off)."""

    cmap: str = DEFAULT_CMAP
    dpi: int = 150
    fmt: str = "png"
    caption: bool = True

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"image format {self.fmt!r}: use one of {', '.join(FORMATS)}")
        if not (isinstance(self.dpi, int) and 10 <= self.dpi <= 2400):
            raise ValueError(f"dpi {self.dpi!r}: use an integer from 10 to 2400")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _check_cmap(name: str) -> None:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ValueError(f"colour map {name!r} is not a matplotlib colour map (e.g. cividis, viridis, magma)")


def _missing(what: str) -> None:
    print(f"rfscope: matplotlib is not installed; skipped the {what} (pip install matplotlib)", file=sys.stderr)


def _plane(h: Heatmap) -> np.ndarray:
    m = replknet_transform(h.values)
    return m if m.ndim <= 2 else m[tuple(h.center[:-2])]  # 3-D: the slice through the centre


def _box(ax: Axes, window: Sequence[Sequence[int]], shape: tuple[int, int], label: str) -> bool:
    """Draw the static RF box edge by edge, clipped edges dashed on the input's border; True if clipped."""
    from matplotlib.lines import Line2D

    (y0, y1), (x0, x1) = window[-2], window[-1]
    h, w = shape
    cut = {"top": y0 < 0, "bottom": y1 >= h, "left": x0 < 0, "right": x1 >= w}
    top, bottom = max(y0, 0) - 0.5, min(y1, h - 1) + 0.5
    left, right = max(x0, 0) - 0.5, min(x1, w - 1) + 0.5
    edges = {"top": ([left, right], [top, top]), "bottom": ([left, right], [bottom, bottom]),
             "left": ([left, left], [top, bottom]), "right": ([right, right], [top, bottom])}
    for side, (xs, ys) in edges.items():
        # clip_on=False: an edge on the input's border is drawn over the axes, never half hidden
        ax.add_line(Line2D(xs, ys, color=MARKER, lw=1.8, ls="--" if cut[side] else "-", clip_on=False))
    clipped = any(cut.values())
    handle = Line2D([], [], color=MARKER, lw=1.8, ls="--" if clipped else "-",
                    label=label + (f", {CLIPPED_NOTE}" if clipped else ""))
    ax.legend(handles=[handle], loc="upper right", fontsize=7, framealpha=0.85)
    return clipped


def _draw(ax: Axes, h: Heatmap, cmap: str, norm: Any = None) -> Any:
    """One map on ``ax``: the image (or curve), the RF marker, the centre, the axis labels; the image artist."""
    m = _plane(h)
    win = h.window
    if m.ndim == 1:
        ax.plot(m, color="black", lw=1.2)
        if win:
            lo, hi = win[0]
            clipped = lo < 0 or hi >= m.shape[0]
            ax.axvspan(max(lo, 0) - 0.5, min(hi, m.shape[0] - 1) + 0.5, alpha=0.18, color=MARKER,
                       label=h.box_label + (f", {CLIPPED_NOTE}" if clipped else ""))
            ax.legend(loc="upper right", fontsize=7)
        ax.axvline(h.center[0], color=MARKER, ls=":")
        ax.set_xlim(-0.5, m.shape[0] - 0.5)
        ax.set_xlabel("position (input px)")
        ax.set_ylabel(f"gradient, {COLOUR_LABEL}")
        return None
    im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    if win:
        _box(ax, win, (m.shape[0], m.shape[1]), h.box_label)
    ax.set_xlim(-0.5, m.shape[1] - 0.5)
    ax.set_ylim(m.shape[0] - 0.5, -0.5)
    ax.plot([h.center[-1]], [h.center[-2]], marker="+", color=MARKER, ms=10, mew=1.8)
    ax.set_xlabel("x (input px)")
    ax.set_ylabel("y (input px)")
    return im


def heatmap_figure(h: Heatmap, options: FigureOptions = FigureOptions()) -> Figure:
    """The heatmap as a matplotlib figure (Agg; close it with ``matplotlib.pyplot.close``).

    Raises ``ImportError`` without matplotlib and ``ValueError`` for an unknown colour map.
    """
    plt = _pyplot()
    if plt is None:
        raise ImportError("matplotlib is not installed (pip install matplotlib)")
    _check_cmap(options.cmap)
    lines = h.caption.count("\n") + 1 if options.caption else 0
    fig, ax = plt.subplots(figsize=(7.0, 5.6 + 0.12 * lines))
    try:
        im = _draw(ax, h, options.cmap)
        if im is not None:
            fig.colorbar(im, ax=ax, label=COLOUR_LABEL)
        ax.set_title(h.title, fontsize=9)
        if options.caption:
            fig.text(0.01, 0.01, h.caption, fontsize=6.5, va="bottom", ha="left")
            fig.subplots_adjust(bottom=0.1 + 0.025 * lines)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def grid_figure(maps: Sequence[Heatmap], options: FigureOptions = FigureOptions(), title: str = "",
                caption: str = "") -> Figure:
    """Several maps side by side (up to 4 per row) with one shared colour bar; each panel keeps its title."""
    plt = _pyplot()
    if plt is None:
        raise ImportError("matplotlib is not installed (pip install matplotlib)")
    if not maps:
        raise ValueError("grid_figure needs at least one map")
    _check_cmap(options.cmap)
    n = len(maps)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    lines = caption.count("\n") + 1 if options.caption and caption else 0
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, 3.6 * rows + 0.6 + 0.12 * lines),
                             squeeze=False, layout="constrained")
    try:
        ims = []
        for k, ax in enumerate(axes.flat):
            if k >= n:
                ax.set_axis_off()
                continue
            ims.append(_draw(ax, maps[k], options.cmap))
            ax.set_title(maps[k].title, fontsize=7.5)
            leg = ax.get_legend()
            if leg is not None:
                for t in leg.get_texts():
                    t.set_fontsize(6)
        im = next((i for i in ims if i is not None), None)
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), label=COLOUR_LABEL, shrink=0.9)
        if title:
            fig.suptitle(title, fontsize=9)
        if lines:
            fig.text(0.01, 0.0, caption, fontsize=6.5, va="bottom", ha="left")
            fig.get_layout_engine().set(rect=(0, 0.02 + 0.03 * lines / rows, 1, 0.98 - 0.02 * lines / rows))
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _render(fig: Figure, options: FigureOptions) -> bytes:
    import matplotlib.pyplot as plt

    # no creation dates: the same run writes the same SVG/PDF bytes
    meta: dict[str, Any] = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[options.fmt]
    buf = io.BytesIO()
    try:
        # tight: no empty margins around the figure (paper layouts place it themselves)
        fig.savefig(buf, format=options.fmt, dpi=options.dpi, metadata=meta, bbox_inches="tight", pad_inches=PAD)
    finally:
        plt.close(fig)
    return buf.getvalue()


def heatmap_image(h: Heatmap, options: FigureOptions = FigureOptions()) -> bytes | None:
    """The heatmap rendered as ``options.fmt`` bytes; ``None`` (with a message) when matplotlib is missing."""
    if _pyplot() is None:
        _missing(f"ERF {options.fmt.upper()}")
        return None
    return _render(heatmap_figure(h, options), options)


def grid_image(maps: Sequence[Heatmap], options: FigureOptions = FigureOptions(), title: str = "",
               caption: str = "") -> bytes | None:
    """The grid figure rendered as ``options.fmt`` bytes; ``None`` (with a message) without matplotlib."""
    if _pyplot() is None:
        _missing(f"ERF grid {options.fmt.upper()}")
        return None
    return _render(grid_figure(maps, options, title, caption), options)
