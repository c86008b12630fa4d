"""Resolution and width independence: the same model at 224² vs 2048², and at 1x vs 8x width.

Shapes propagate on the meta device and no activation is computed, so analysis
time and peak memory should not depend on the input resolution or the channel
width.  Target: time and peak memory within 10% (ratio <= 1.10).

* time: median of interleaved runs in one process;
* peak Python memory: ``tracemalloc`` peak during one ``analyze`` (deterministic);
* peak RSS: ``ru_maxrss`` of a fresh subprocess that builds the model on meta and
  analyses it once (imports included, so it is mostly the interpreter and torch).

    python benchmarks/resolution.py [--reps 7]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc

import torch
import torch.nn as nn
import torchvision
from _common import interleave, median, parser, table, write

import rfscope

TARGET = 1.10


class WideCNN(nn.Module):
    """A ResNet-style CNN whose every channel count is multiplied by ``width``."""

    def __init__(self, width: int = 1, blocks: int = 2) -> None:
        super().__init__()
        c = [32 * width, 64 * width, 128 * width, 256 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(3, c[0], 7, 2, 3, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        cin = c[0]
        for i, co in enumerate(c):
            for b in range(blocks):
                stages.append(_Block(cin, co, 2 if (b == 0 and i > 0) else 1))
                cin = co
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.down(x))


def build(case: str) -> tuple[nn.Module, tuple[int, ...]]:
    """``resnet50@224``, ``resnet50@2048``, ``wide1``, ``wide8`` (wide ones on meta, 224²)."""
    if case.startswith("resnet50@"):
        size = int(case.split("@")[1])
        return torchvision.models.resnet50(weights=None), (1, 3, size, size)
    width = int(case.removeprefix("wide"))
    with torch.device("meta"):
        return WideCNN(width), (1, 3, 224, 224)


PAIRS = [("resnet50@224", "resnet50@2048"), ("wide1", "wide8")]


def tracemalloc_peak(m: nn.Module, shape: tuple[int, ...]) -> int:
    rfscope.analyze(m, input_shape=shape)  # warm caches (plugin loading, imports)
    tracemalloc.start()
    try:
        rfscope.analyze(m, input_shape=shape)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def child(case: str) -> None:
    """Fresh process: peak RSS of building the model on meta and analysing it once."""
    with torch.device("meta"):
        m, shape = build(case)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rfscope.analyze(m, input_shape=shape)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_before_kib": before, "rss_peak_kib": after}))


def peak_rss(case: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__, "resolution.json", child=True)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    rows = []
    for ref, sub in PAIRS:
        (m0, s0), (m1, s1) = build(ref), build(sub)
        t = interleave(
            {ref: lambda m=m0, s=s0: rfscope.analyze(m, input_shape=s),
             sub: lambda m=m1, s=s1: rfscope.analyze(m, input_shape=s)},
            reps=a.reps,
        )
        r0, r1 = rfscope.analyze(m0, input_shape=s0), rfscope.analyze(m1, input_shape=s1)
        p0, p1 = tracemalloc_peak(m0, s0), tracemalloc_peak(m1, s1)
        g0, g1 = peak_rss(ref), peak_rss(sub)
        row = {
            "reference": ref, "subject": sub,
            "params": f"{r0.summary.params_total:,} / {r1.summary.params_total:,}",
            "time_ref_s": median(t[ref]), "time_sub_s": median(t[sub]),
            "time_ratio": median(t[sub]) / median(t[ref]),
            "pymem_ref_mib": p0 / 2**20, "pymem_sub_mib": p1 / 2**20, "pymem_ratio": p1 / p0,
            "rss_ref_mib": g0["rss_peak_kib"] / 1024, "rss_sub_mib": g1["rss_peak_kib"] / 1024,
            "rss_ratio": g1["rss_peak_kib"] / g0["rss_peak_kib"],
            "output_rf": f"{r0.rf().status} / {r1.rf().status}",
        }
        row["met"] = all(row[k] <= TARGET for k in ("time_ratio", "pymem_ratio", "rss_ratio"))
        rows.append(row)
        print(table([row], list(row)), flush=True)
    cols = ["reference", "subject", "time_ref_s", "time_sub_s", "time_ratio", "pymem_ref_mib", "pymem_sub_mib",
            "pymem_ratio", "rss_ref_mib", "rss_sub_mib", "rss_ratio", "met"]
    print()
    print(table(rows, cols))
    write(a.out, {"benchmark": "resolution", "target": TARGET, "reps": a.reps, "rows": rows})


if __name__ == "__main__":
    main()
