"""ERF heatmap PNG (matplotlib, Agg): RepLKNet-transformed map, static RF box, centre, colour bar.

It draws plain data (a :class:`Heatmap`: an array, positions and text) and knows nothing of
:class:`~rfscope.probe.effective.ERFResult`, which builds the :class:`Heatmap` and its wording.

matplotlib is a dependency of rfscope; should it be missing (``pip install matplotlib``),
:func:`heatmap_png` and :func:`save_heatmap` warn and return ``None``.  The PNG is
rendered in memory and written with :mod:`rfscope.export.files`.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfscope.probe.metrics import replknet_transform

__all__ = ["Heatmap", "heatmap_png", "save_heatmap"]


@dataclass(frozen=True)
class Heatmap:
    """What the PNG shows, as plain data."""

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


def heatmap_png(h: Heatmap) -> bytes | None:
    """The heatmap as PNG bytes; ``None`` (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        print("rfscope: matplotlib is not installed; skipped the ERF PNG (pip install matplotlib)",
              file=sys.stderr)
        return None
    m = replknet_transform(h.values)
    fig, ax = plt.subplots(figsize=(7.0, 6.4))
    try:
        win = h.window
        if m.ndim == 1:
            ax.plot(m)
            if win:
                lo, hi = max(win[0][0], 0), min(win[0][1], m.shape[0] - 1)
                ax.axvspan(lo - 0.5, hi + 0.5, alpha=0.15, color="tab:red", label=h.box_label)
                ax.legend(loc="upper right", fontsize=7)
            ax.axvline(h.center[0], color="tab:red", ls=":")
            ax.set_xlabel("input position")
            ax.set_ylabel("log10(1+ERF)/max")
        else:
            img = m if m.ndim == 2 else m[tuple(h.center[:-2])]  # 3-D: the slice through the centre
            im = ax.imshow(img, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
            fig.colorbar(im, ax=ax, label="log10(1+ERF)/max")
            if win:
                (y0, y1), (x0, x1) = win[-2], win[-1]
                clipped = y0 < 0 or x0 < 0 or y1 >= img.shape[0] or x1 >= img.shape[1]
                y0, x0 = max(y0, 0), max(x0, 0)
                y1, x1 = min(y1, img.shape[0] - 1), min(x1, img.shape[1] - 1)
                label = h.box_label + (" (clipped to the input)" if clipped else "")
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                       edgecolor="black", lw=1.5, ls="--", label=label))
                ax.legend(loc="upper right", fontsize=7)
                ax.set_xlim(-0.5, img.shape[1] - 0.5)
                ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.plot([h.center[-1]], [h.center[-2]], marker="+", color="black", ms=12, mew=2)
        ax.set_title(h.title, fontsize=9)
        fig.text(0.01, 0.01, h.caption, fontsize=6.5, va="bottom", ha="left")
        fig.subplots_adjust(bottom=0.17)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_heatmap(h: Heatmap, path: str | Path) -> Path | None:
    """Write the heatmap to ``path`` atomically; ``None`` (with a message) when matplotlib is missing."""
    from rfscope.export.files import write_file

    data = heatmap_png(h)
    return None if data is None else write_file(path, data)
