"""What per-position tables cost: time, peak memory and table size on token-layout models.

For each model and input size, in its own subprocess (so peak memory is that run's):

- ``trace_s``: a bare ``torch.fx.symbolic_trace`` of the model (the reference, same process);
- ``analyze_s``: ``rfscope.analyze`` (best of ``--reps``), and ``ratio = analyze_s / trace_s``;
- ``peak_mib``: the process's peak resident memory after analysing, minus the peak after
  building the model and tracing it (what the analysis itself added);
- ``table_nodes``: nodes whose state is a table; ``max_table_elems``: the largest number of
  int64 values any one table holds (stride-0 dims cost nothing), and ``max_ratio``: that
  number divided by ``2 * n_axes * positions`` of the tensor it describes (positions = the
  tensor's elements, excluding its last dim when that dim is constant in the table).  A ratio
  of 1 or less means a table never holds more than one (lo, hi) pair per axis and position.

Run: ``python benchmarks/token_tables.py [--models maxvit_t,swin_t] [--sizes 224,1024]``.
Results: ``benchmarks/RESULTS.md``, "Per-position tables (issue 12)".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r'''
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, torchvision, rfscope
name, size, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kw = {"image_size": size} if name.startswith("vit") else {}
if name.startswith("maxvit"):
    kw = {"input_size": (size, size)}
m = torchvision.models.get_model(name, weights=None, **kw).eval()
shape = (1, 3, size, size)
t0 = time.perf_counter(); torch.fx.symbolic_trace(m); trace_s = time.perf_counter() - t0
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = None
for _ in range(reps):
    t0 = time.perf_counter(); rep = rfscope.analyze(m, input_shape=shape); dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
nodes = [r for r in rep.records.values() if getattr(r.state, "table", None) is not None]
worst = 0.0
big = 0
for r in nodes:
    t = r.state.table
    n = t.nbytes() // 8
    big = max(big, n)
    pos = 1
    for s in t.shape:
        pos *= s
    worst = max(worst, n / (2 * t.n_axes * pos))
unknown = sum(1 for r in rep.records.values() if r.rf is not None and r.rf.status == "unknown")
print(json.dumps({"model": name, "size": size, "nodes": len(rep.records), "unknown": unknown,
                  "trace_s": trace_s, "analyze_s": best, "ratio": best / trace_s,
                  "peak_mib": (peak - base) / 1024, "table_nodes": len(nodes), "max_table_elems": big,
                  "max_ratio": worst}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="maxvit_t,swin_t")
    ap.add_argument("--sizes", default="224,1024")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        for size in a.sizes.split(","):
            t0 = time.time()
            try:
                out = subprocess.run([sys.executable, "-c", CHILD, name, size, str(a.reps)], capture_output=True,
                                     text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"model": name, "size": int(size), "error": f"timeout after {a.timeout:.0f} s"})
                continue
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append({"model": name, "size": int(size), "error": (out.stderr.strip().splitlines() or ["?"])[-1]})
            print(f"{name} {size}: {time.time() - t0:.0f} s", file=sys.stderr)
    cols = ["model", "size", "nodes", "unknown", "trace_s", "analyze_s", "ratio", "peak_mib", "table_nodes",
            "max_table_elems", "max_ratio"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['size']} | error: {r['error']} |")
            continue
        cells = [f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
