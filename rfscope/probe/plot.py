"""ERF heatmap PNG (matplotlib, Agg): RepLKNet-transformed map, static RF box, centre, colour bar.

matplotlib is optional (``pip install 'rfscope[images]'``); without it
:func:`heatmap_png` and :func:`save_heatmap` warn and return ``None``.  The PNG is
rendered in memory and written with :mod:`rfscope.export.files`.
"""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from rfscope.probe.metrics import replknet_transform

if TYPE_CHECKING:
    from rfscope.probe.effective import ERFResult

__all__ = ["heatmap_png", "save_heatmap"]


def _caption(res: ERFResult) -> str:
    c = res.conventions
    ar = ", ".join(f"t={k}: " + ("-" if v is None else f"{100 * v['ratio']:.1f}%") for k, v in res.area_ratio.items())
    text = (
        f"reduction: {c['reduction']} ({c['reduction_definition']}); colour: log10(1+ERF)/max; "
        f"weights: {c['weights']}; inputs: {c['inputs']}; {c['dtype']} on {c['device']}. "
        f"Box: static RF of the centre unit ({res.rf.get('status')}), +: square centre. Area ratios {ar}."
    )
    return "\n".join(textwrap.wrap(text, 110))


def heatmap_png(res: ERFResult) -> bytes | None:
    """The heatmap as PNG bytes; ``None`` (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        print("rfscope: matplotlib is not installed; skipped the ERF PNG (pip install 'rfscope[images]')",
              file=sys.stderr)
        return None
    m = replknet_transform(res.map)
    c = res.conventions
    title = (f"ERF of {c['label']} — input {'x'.join(map(str, c['input_shape'][1:]))}, "
             f"{c['samples']} samples, {c['reduction']}")
    fig, ax = plt.subplots(figsize=(7.0, 6.4))
    try:
        win = res.rf.get("window")
        if m.ndim == 1:
            ax.plot(m)
            if win:
                lo, hi = max(win[0][0], 0), min(win[0][1], m.shape[0] - 1)
                ax.axvspan(lo - 0.5, hi + 0.5, alpha=0.15, color="tab:red", label=f"static RF {res.rf.get('size')}")
                ax.legend(loc="upper right", fontsize=7)
            ax.axvline(res.center[0], color="tab:red", ls=":")
            ax.set_xlabel("input position")
            ax.set_ylabel("log10(1+ERF)/max")
        else:
            img = m if m.ndim == 2 else m[tuple(res.center[:-2])]  # 3-D: the slice through the centre
            im = ax.imshow(img, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
            fig.colorbar(im, ax=ax, label="log10(1+ERF)/max")
            if win:
                (y0, y1), (x0, x1) = win[-2], win[-1]
                clipped = y0 < 0 or x0 < 0 or y1 >= img.shape[0] or x1 >= img.shape[1]
                y0, x0 = max(y0, 0), max(x0, 0)
                y1, x1 = min(y1, img.shape[0] - 1), min(x1, img.shape[1] - 1)
                label = f"static RF {res.rf.get('size')}" + (" (clipped to the input)" if clipped else "")
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                       edgecolor="black", lw=1.5, ls="--", label=label))
                ax.legend(loc="upper right", fontsize=7)
                ax.set_xlim(-0.5, img.shape[1] - 0.5)
                ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.plot([res.center[-1]], [res.center[-2]], marker="+", color="black", ms=12, mew=2)
        ax.set_title(title, fontsize=9)
        fig.text(0.01, 0.01, _caption(res), fontsize=6.5, va="bottom", ha="left")
        fig.subplots_adjust(bottom=0.17)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_heatmap(res: ERFResult, path: str | Path) -> Path | None:
    """Write the heatmap to ``path`` atomically; ``None`` (with a message) when matplotlib is missing."""
    from rfscope.export.files import write_file

    data = heatmap_png(res)
    return None if data is None else write_file(path, data)
