"""Overhead over tracing: full ``rfscope.analyze`` vs ``torch.fx.symbolic_trace`` alone.

``analyze`` = meta copy + trace + shape propagation on meta + every plugin + report
(networkx graph, module map).  The bare trace is what any fx-based tool pays at
least.  Target: analyze <= 2x the bare trace for every model.  Models are built
(weights=None) outside the timing; the two are timed alternately in one process.

``ratio`` is the median over repetitions of analyze/trace for the two runs of one repetition
(back to back): on a shared 2-core machine the speed of the whole machine drifts by up to 50 %
within a minute, which moves both runs of a pair alike.  The ratio of the medians and the ratio
of the fastest runs (timeit's advice for noisy machines) are reported beside it.

    python benchmarks/overhead.py [--reps 5] [--models resnet50,vit_b_16] [--profile resnet50]
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.fx as fx
from _common import interleave, median, parser, table, torchvision_model, write

import rfscope
import rfscope.pipeline

MODELS = [
    "resnet50", "resnet152", "inception_v3", "mobilenet_v3_large", "efficientnet_b7",
    "convnext_base", "vit_b_16", "swin_t", "regnet_y_32gf",
]
TARGET = 2.0


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    return torchvision_model(name)


STAGES = ["structural_copy", "trace_model", "propagate_shapes", "run_plugins", "build_graph", "count", "diagnose"]


def stages(m: torch.nn.Module, shape: tuple[int, ...], reps: int) -> dict[str, float]:
    """Median seconds spent in each stage of ``analyze`` (its module-level helpers, wrapped)."""
    acc: dict[str, list[float]] = {k: [] for k in STAGES}
    saved = {k: getattr(rfscope.pipeline, k) for k in STAGES}

    def wrap(k: str, f: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                acc[k].append(time.perf_counter() - t)
        return timed

    try:
        for k, f in saved.items():
            setattr(rfscope.pipeline, k, wrap(k, f))
        for _ in range(reps):
            rfscope.analyze(m, input_shape=shape)
    finally:
        for k, f in saved.items():
            setattr(rfscope.pipeline, k, f)
    return {k: median(v) if v else 0.0 for k, v in acc.items()}


def profile(name: str) -> None:
    from pyinstrument import Profiler

    m, shape = build(name)
    rfscope.analyze(m, input_shape=shape)
    p = Profiler(interval=0.0005)
    p.start()
    for _ in range(5):
        rfscope.analyze(m, input_shape=shape)
    p.stop()
    print(p.output_text(unicode=False, color=False))


def main() -> None:
    ap = parser(__doc__, "overhead.json")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--profile", default=None, help="print a pyinstrument profile of one model and exit")
    a = ap.parse_args()
    if a.profile:
        profile(a.profile)
        return
    rows = []
    for name in a.models.split(","):
        m, shape = build(name)
        t = interleave(
            {
                "trace": lambda m=m: fx.symbolic_trace(m),
                "analyze": lambda m=m, s=shape: rfscope.analyze(m, input_shape=s),
            },
            reps=a.reps,
        )
        rep = rfscope.analyze(m, input_shape=shape)
        tr, an = median(t["trace"]), median(t["analyze"])
        ratio = median([x / y for x, y in zip(t["analyze"], t["trace"], strict=True)])
        st = stages(m, shape, a.reps)
        row = {
            "model": name, "nodes": len(rep.records), "trace_s": tr, "analyze_s": an,
            "ratio": ratio, "ratio_of_medians": an / tr, "ratio_of_min": min(t["analyze"]) / min(t["trace"]),
            "met": ratio <= TARGET, "output_rf": rep.rf().status,
            # each stage as a fraction of the bare trace (trace_model is rfscope's own trace)
            **{f"{k}/trace": v / tr for k, v in st.items()},
        }
        rows.append(row)
        print(table([row], list(row)).splitlines()[-1], flush=True)
        del m, rep
    cols = ["model", "nodes", "trace_s", "analyze_s", "ratio", "ratio_of_medians", "ratio_of_min", "met"]
    print()
    print(table(rows, cols))
    print("\nper stage, as a multiple of the bare trace:")
    print(table(rows, ["model"] + [f"{k}/trace" for k in STAGES]))
    worst = max(r["ratio"] for r in rows)
    print(f"\nworst ratio {worst:.2f} (target <= {TARGET}): {'met' if worst <= TARGET else 'NOT met'}")
    write(a.out, {"benchmark": "overhead", "target": TARGET, "reps": a.reps, "rows": rows})


if __name__ == "__main__":
    main()
