"""Fallback cost: ``rfscope.analyze`` on the torch.export / make_fx path vs the bare tracer it uses.

Models that ``torch.fx.symbolic_trace`` cannot follow are traced by ``torch.export``, or, when the
model has data-dependent parts (a detector's proposals and NMS), by ``make_fx`` on the example
input, with shapes then propagated on real tensors (issue 13 item 4).  For each model the bare
tracer of the path rfscope used (``torch.export.export(model, inputs, strict=False)``, or
``make_fx(model, tracing_mode="real")`` on the same real input) and the whole ``analyze`` (the
failed symbolic trace and export attempts included) are timed alternately in one process, and the
ratio of medians is reported.  Targets: <= 2x on the export path, <= 3x for detectors.

    python benchmarks/export_cost.py [--reps 3] [--models raft_small,fasterrcnn_mobilenet_v3_large_fpn]
    python benchmarks/export_cost.py --reps 1 --models detection,segmentation,video,optical_flow,monai

``--models`` takes model names and torchvision family names (``detection``, ``segmentation``,
``video``, ``optical_flow``: every model of the family, with benchmarks/zoo.py's inputs) and
``monai`` (SwinUNETR 2-D and 3-D).  Each model's first ``analyze`` is the warm-up and gives the
seconds per stage; the rows are written to ``--out`` as they come (a long run can be stopped).
A model that symbolic_trace follows is timed against a bare symbolic_trace (the fallback is
not involved; benchmarks/overhead.py is that comparison's own benchmark).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from _common import interleave, median, parser, table, write

import rfscope
import rfscope.pipeline
from rfscope.trace.aten import plain_outputs

#: name -> (builder, example inputs); detectors at 320 with their transform resizing to 320
DETECTORS = ["fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn", "ssd300_vgg16", "maskrcnn_resnet50_fpn"]
OTHERS = ["raft_small", "monai_swinunetr_2d", "monai_swinunetr_3d"]
FAMILIES = ("detection", "segmentation", "video", "optical_flow")
#: ``toy_mask`` (--models toy_mask) is a few ms of tracing: its ratio is rfscope's fixed cost, not the fallback's
MODELS = OTHERS + DETECTORS
TARGET = {"torch.export": 2.0, "make_fx (specialised to the example input)": 3.0}


class ToyMask(torch.nn.Module):
    """A conv net with a boolean-mask selection at the end (symbolic trace + real-tensor shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(*[torch.nn.Conv2d(3 if i == 0 else 32, 32, 3, padding=1) for i in range(8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y[y > 0].sum()


def build(name: str) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    gen = torch.Generator().manual_seed(0)
    if name == "toy_mask":
        return ToyMask().eval(), (torch.rand(1, 3, 64, 64, generator=gen),)
    if name == "monai_swinunetr_2d":
        from monai.networks.nets import SwinUNETR

        m = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
                      num_heads=(1, 1, 1, 1))
        return m.eval(), (torch.rand(1, 1, 64, 64, generator=gen),)
    if name == "monai_swinunetr_3d":  # as benchmarks/zoo.py builds it
        from monai.networks.nets import SwinUNETR

        m = SwinUNETR(in_channels=1, out_channels=2, feature_size=24)
        return m.eval(), (torch.rand(1, 1, 96, 96, 96, generator=gen),)
    import torchvision

    fam = _family(name)
    if fam in ("segmentation", "video"):  # benchmarks/zoo.py's inputs
        kw0: dict[str, Any] = {"weights": None}
        if fam == "segmentation":
            kw0["weights_backbone"] = None
        shape = ((1, 3, 520, 520) if fam == "segmentation" else
                 (1, 3, 16, 112, 112) if name.startswith(("r3d", "mc3", "r2plus1d")) else (1, 3, 16, 224, 224))
        return torchvision.models.get_model(name, **kw0).eval(), (torch.rand(*shape, generator=gen),)

    kw: dict[str, Any] = {"weights": None}
    if fam == "detection":  # no download
        kw["weights_backbone"] = None
    m = torchvision.models.get_model(name, **kw).eval()
    if fam == "optical_flow":  # raft_small at 128 as before; zoo.py takes 224
        s = 128 if name == "raft_small" else 224
        return m, (torch.rand(1, 3, s, s, generator=gen), torch.rand(1, 3, s, s, generator=gen))
    t = m.transform
    size = int(t.fixed_size[0]) if getattr(t, "fixed_size", None) else 320
    t.min_size, t.max_size = (size,), size
    return m, (torch.rand(1, 3, size, size, generator=gen),)


def _family(name: str) -> str:
    """torchvision family of ``name`` (``classification`` for the top-level models)."""
    import torchvision.models as tvm

    parts = tvm.get_model_builder(name).__module__.split(".")
    return parts[2] if len(parts) > 3 else "classification"


def expand(models: str) -> list[str]:
    """``--models``: names, torchvision family names and ``monai``."""
    import torchvision.models as tvm

    out: list[str] = []
    for item in filter(None, models.split(",")):
        if item in FAMILIES:
            out.extend(sorted(tvm.list_models(module=getattr(tvm, item))))
        elif item == "monai":
            out.extend(["monai_swinunetr_2d", "monai_swinunetr_3d"])
        else:
            out.append(item)
    return out


def bare(path: str, m: torch.nn.Module, inputs: tuple[Any, ...]) -> Callable[[], Any]:
    """The bare tracer of ``path``, on the model itself (no copy, no analysis)."""
    if path == "symbolic_trace":
        return lambda: torch.fx.symbolic_trace(m)
    if path.startswith("make_fx"):
        from torch.fx.experimental.proxy_tensor import make_fx

        def run() -> Any:
            with torch.no_grad():
                return make_fx(lambda *a: plain_outputs(m(*a)), tracing_mode="real",
                               _error_on_data_dependent_ops=False)(*inputs)
        return run
    return lambda: torch.export.export(m, inputs, strict=False)


STAGES = ["trace_model", "propagate_shapes", "run_plugins", "count"]


def stages(m: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple[dict[str, float], Any]:
    """Seconds spent in each stage of one ``analyze`` (its module-level helpers, wrapped), and its report."""
    acc: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    saved = {k: getattr(rfscope.pipeline, k) for k in STAGES}

    def wrap(k: str, f: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                acc[k] += time.perf_counter() - t
        return timed

    try:
        for k, f in saved.items():
            setattr(rfscope.pipeline, k, wrap(k, f))
        rep = rfscope.analyze(m, example_inputs=inputs)
    finally:
        for k, f in saved.items():
            setattr(rfscope.pipeline, k, f)
    return acc, rep


def main() -> None:
    ap = parser(__doc__, "export_cost.json")
    ap.add_argument("--models", default=",".join(MODELS))
    a = ap.parse_args()
    rows = []
    for name in expand(a.models):
        m, inputs = build(name)
        t0 = time.perf_counter()
        st, rep = stages(m, inputs)  # the warm-up
        first = time.perf_counter() - t0
        path = rep.trace_path
        def analyze(m: torch.nn.Module = m, x: tuple[Any, ...] = inputs) -> Any:
            return rfscope.analyze(m, example_inputs=x)

        t = interleave({"bare": bare(path, m, inputs), "analyze": analyze}, reps=a.reps)
        b, an = median(t["bare"]), median(t["analyze"])
        target = TARGET.get(path, 2.0)
        row = {"model": name, "path": path.split(" ")[0], "nodes": len(rep.records),
               "real_shapes": "shapes propagated on real tensors" in (rep.trace_fallback or ""),
               "bare_s": b, "analyze_s": an, "ratio": an / b, "target": target, "met": an / b <= target,
               "first_analyze_s": first, **{f"{k}_s": v for k, v in st.items()}}
        rows.append(row)
        print(table([row], list(row)).splitlines()[-1], flush=True)
        write(a.out, {"benchmark": "export_cost", "targets": TARGET, "reps": a.reps, "rows": rows})
        del m, rep
    cols = ["model", "path", "real_shapes", "nodes", "bare_s", "analyze_s", "ratio", "target", "met"]
    print()
    print(table(rows, cols))
    print("\nseconds per stage of one analyze:")
    print(table(rows, ["model"] + [f"{k}_s" for k in STAGES]))
    worst = [r for r in rows if not r["met"]]
    print(f"\n{len(rows) - len(worst)}/{len(rows)} within target" + (f"; over: {[r['model'] for r in worst]}"
                                                                     if worst else ""))
    write(a.out, {"benchmark": "export_cost", "targets": TARGET, "reps": a.reps, "rows": rows})


if __name__ == "__main__":
    main()
