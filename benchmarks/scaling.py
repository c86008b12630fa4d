"""Graph size scaling: time per node of ``rfscope.analyze`` on synthetic 1k/10k/50k-node models.

Two topologies, built on the meta device:

* ``chain``: a deep stack of ``Conv2d(3x3) -> ReLU`` blocks (nested ``Sequential``s, so
  module paths are three deep); the receptive field grows by 2 pixels per conv, so the
  exact window bit sets grow with depth (50k nodes: an RF of ~50k pixels per axis).
* ``wide``: one input feeding thousands of parallel ``conv -> relu`` branches with
  different dilations, concatenated on channels (one merge with thousands of inputs).

Target: time per node stays flat (10k/1k time ratio <= 12).  The bare
``torch.fx.symbolic_trace`` is timed too, as the floor any fx-based tool pays.
``analyze_s`` is the whole analysis (trace, shapes, plugins, counting, design diagnostics,
report); ``diagnose_s`` is the design diagnostics' share (``rfscope.passes.diagnostics``), timed
again on their own up to ``--diag-max`` nodes.

    python benchmarks/scaling.py [--sizes 1000,10000,50000] [--reps 3] [--profile chain:10000]
"""

from __future__ import annotations

import time

import torch
import torch.fx as fx
import torch.nn as nn
from _common import interleave, median, parser, table, write

import rfscope
import rfscope.pipeline
from rfscope.passes.diagnostics import diagnose

TARGET = 12.0


def chain(nodes: int) -> nn.Module:
    """About ``nodes`` fx nodes: ``nodes // 2`` convs, each followed by a ReLU."""
    blocks = nodes // 2
    per = 10
    with torch.device("meta"):
        groups = [
            nn.Sequential(*[_block() for _ in range(min(per, blocks - i))]) for i in range(0, blocks, per)
        ]
        return nn.Sequential(*groups)


def _block() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())


class Wide(nn.Module):
    """``branches`` parallel conv -> relu paths on one input, concatenated: ~2 nodes per branch."""

    def __init__(self, branches: int) -> None:
        super().__init__()
        with torch.device("meta"):
            self.branches = nn.ModuleList(
                nn.Sequential(nn.Conv2d(3, 1, 3, padding=1 + i % 4, dilation=1 + i % 4), nn.ReLU())
                for i in range(branches)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


def build(kind: str, nodes: int) -> nn.Module:
    return chain(nodes) if kind == "chain" else Wide(nodes // 2)


def _input(kind: str) -> tuple[int, ...]:
    return (1, 4, 32, 32) if kind == "chain" else (1, 3, 32, 32)


def profile(spec: str) -> None:
    from pyinstrument import Profiler

    kind, n = spec.split(":")
    m = build(kind, int(n))
    p = Profiler(interval=0.001)
    p.start()
    rfscope.analyze(m, input_shape=_input(kind))
    p.stop()
    print(p.output_text(unicode=False, color=False))


def main() -> None:
    ap = parser(__doc__, "scaling.json")
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--kinds", default="chain,wide")
    ap.add_argument("--diag-max", type=int, default=1000,
                    help="time the design diagnostics only up to this many nodes (quadratic on 'wide')")
    ap.add_argument("--profile", default=None, help="KIND:NODES: print a pyinstrument profile and exit")
    a = ap.parse_args()
    if a.profile:
        profile(a.profile)
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    for kind in a.kinds.split(","):
        shape = _input(kind)
        base: dict[str, float] = {}
        for n in sizes:
            m = build(kind, n)
            rep = rfscope.analyze(m, input_shape=shape)  # warm-up, and the node count
            if n <= 10000:
                t = interleave(
                    {"trace": lambda m=m: fx.symbolic_trace(m),
                     "analyze": lambda m=m: rfscope.analyze(m, input_shape=shape)},
                    reps=a.reps, warmup=0,
                )
            else:  # one run each: minutes on a shared machine
                t = {"analyze": [_time(lambda m=m: rfscope.analyze(m, input_shape=shape))],
                     "trace": [_time(lambda m=m: fx.symbolic_trace(m))]}
            an, tr = median(t["analyze"]), median(t["trace"])
            diag = (_time(lambda rep=rep: diagnose(rep.records, rep.graph, rep.input_size))
                    if n <= a.diag_max else None)
            nn_ = len(rep.records)
            out_rf = rep.rf()
            row = {"kind": kind, "target_nodes": n, "nodes": nn_, "trace_s": tr, "analyze_s": an,
                   "us_per_node": an / nn_ * 1e6, "analyze/trace": an / tr, "diagnose_s": diag,
                   "output_rf": f"{out_rf.status} {out_rf.size[0] if out_rf.status != 'unknown' else ''}"}
            base.setdefault("first", an)
            base.setdefault("n", nn_)
            row["time_vs_smallest"] = an / base["first"]
            row["nodes_vs_smallest"] = nn_ / base["n"]
            rows.append(row)
            print(table([row], list(row)).splitlines()[-1], flush=True)
            del rep, m
    print()
    cols = ["kind", "nodes", "trace_s", "analyze_s", "us_per_node", "analyze/trace", "time_vs_smallest",
            "nodes_vs_smallest", "diagnose_s", "output_rf"]
    print(table(rows, cols))
    verdicts = {}
    for kind in a.kinds.split(","):
        r = {x["target_nodes"]: x for x in rows if x["kind"] == kind}
        if 1000 in r and 10000 in r:
            ratio = r[10000]["analyze_s"] / r[1000]["analyze_s"]
            verdicts[kind] = {"10k/1k": ratio, "met": ratio <= TARGET}
            verdict = "met" if ratio <= TARGET else "NOT met"
            print(f"{kind}: 10k/1k time ratio {ratio:.1f} (target <= {TARGET}): {verdict}")
    write(a.out, {"benchmark": "scaling", "target": TARGET, "reps": a.reps, "rows": rows, "verdicts": verdicts,
                  "note": "analyze_s includes the design diagnostics; diagnose_s times them again on their own"})


def _time(f: object) -> float:
    t = time.perf_counter()
    f()  # type: ignore[operator]
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
