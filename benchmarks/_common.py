"""Shared helpers for the benchmark scripts: interleaved timing, machine info, tables, JSON.

Timings on a shared machine are noisy, so every comparison is a ratio measured
inside one process: the reference and the subject are run alternately
(``interleave``) and the medians are compared.  Nothing here is part of the
test suite.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))


def torchvision_model(name: str, meta: bool = False) -> tuple[Any, tuple[int, ...]]:
    """torchvision model ``name`` with random weights (on ``meta`` if asked) and its input shape:
    299² for Inception, 16-frame clips for the video models, 224² otherwise."""
    import torch
    import torchvision

    kw: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False)
    if name.startswith(("deeplab", "fcn", "lraspp")):
        kw["weights_backbone"] = None
    if name.startswith(("r3d", "mc3", "r2plus1d")):
        shape: tuple[int, ...] = (1, 3, 16, 112, 112)
    elif name.startswith(("mvit", "s3d", "swin3d")):
        shape = (1, 3, 16, 224, 224)
    else:
        size = 299 if "inception" in name else 224
        shape = (1, 3, size, size)
    builder = torchvision.models.get_model_builder(name)
    if meta:
        with torch.device("meta"):
            return builder(**kw), shape
    return builder(**kw), shape


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    for pkg in ("torchvision", "networkx", "torchinfo", "torchscan", "fvcore"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[pkg] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def once(fn: Callable[[], Any]) -> float:
    """Wall time of one call, with the garbage collector quiet during it."""
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    finally:
        gc.enable()


def interleave(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every function ``reps`` times, alternating between them; returns all timings."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for i in range(reps):
        order = keys if i % 2 == 0 else keys[::-1]  # no systematic first/second bias
        for k in order:
            out[k].append(once(fns[k]))
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(rows: list[dict[str, Any]], cols: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def parser(doc: str | None, default_out: str, child: bool = False) -> argparse.ArgumentParser:
    """Common options; ``child=True`` adds the hidden ``--child CASE`` of scripts that re-run themselves
    in a fresh subprocess (peak RSS per case)."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--out", default=str(HERE / default_out), help="where to write the JSON results")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per measurement")
    if child:
        p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def write(out: str, payload: dict[str, Any]) -> None:
    payload = {"machine": machine(), **payload}
    Path(out).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
