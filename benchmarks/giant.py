"""Giant models: a >= 10-billion-parameter model built on ``meta``, analysed under 1 GiB peak RSS.

Each model is built with ``torch.device("meta")`` (no weight is ever allocated)
and analysed in a fresh subprocess that reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so the number covers the
interpreter, torch, the model object and the whole analysis.  The init check is
run too: on meta weights it must say it needs real weights, not crash.
Target: peak RSS < 1 GiB for every model.

    python benchmarks/giant.py [--models vit_10b,convnext_12b]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
import torchvision
from _common import parser, table, write
from torchvision.models.convnext import CNBlockConfig

import rfscope

TARGET_MIB = 1024.0


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    with torch.device("meta"):
        if name == "vit_10b":  # 14 layers of width 8192: 12 * 8192^2 params per layer
            m = torchvision.models.VisionTransformer(
                image_size=224, patch_size=16, num_layers=14, num_heads=64, hidden_dim=8192, mlp_dim=32768,
            )
            return m, (1, 3, 224, 224)
        if name == "convnext_12b":  # ConvNeXt-B depths, 12x the channels
            cfg = [CNBlockConfig(1536, 3072, 3), CNBlockConfig(3072, 6144, 3),
                   CNBlockConfig(6144, 12288, 27), CNBlockConfig(12288, None, 3)]
            return torchvision.models.ConvNeXt(cfg), (1, 3, 224, 224)
    raise SystemExit(f"unknown model {name!r}; choose vit_10b or convnext_12b")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str) -> None:
    after_import = _rss_mib()
    t0 = time.perf_counter()
    m, shape = build(name)
    t_build = time.perf_counter() - t0
    after_build = _rss_mib()
    t0 = time.perf_counter()
    rep = rfscope.analyze(m, input_shape=shape)
    t_an = time.perf_counter() - t0
    try:  # on meta weights the init check must refuse with a clear message, not crash
        rfscope.check_init(m, report=rep)
        init_msg = "ran (unexpected on meta weights)"
    except Exception as e:  # noqa: BLE001
        init_msg = f"{type(e).__name__}: {str(e)[:160]}"
    sm = rep.summary
    out_rf = rep.rf()
    local = out_rf.local if out_rf.status == "global" else out_rf
    print(json.dumps({
        "model": name, "params": sm.params_total, "macs": sm.macs, "nodes": len(rep.records),
        "output_rf": out_rf.status, "local_rf": list(local.size) if local is not None else None,
        "unknown_nodes": sum(1 for r in rep.records.values() if getattr(r.state, "status", None) == "unknown"),
        "build_s": t_build, "analyze_s": t_an,
        "rss_after_import_mib": after_import, "rss_after_build_mib": after_build, "peak_rss_mib": _rss_mib(),
        "init_check": init_msg,
    }))


def main() -> None:
    ap = parser(__doc__, "giant.json", child=True)
    ap.add_argument("--models", default="vit_10b,convnext_12b")
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    rows = []
    for name in a.models.split(","):
        p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
        if p.returncode != 0:
            rows.append({"model": name, "error": p.stderr.strip().splitlines()[-1] if p.stderr else p.returncode})
            print(f"{name}: failed: {rows[-1]['error']}")
            continue
        row = json.loads(p.stdout.strip().splitlines()[-1])
        row["params_B"] = row["params"] / 1e9
        row["met"] = row["params"] >= 10e9 and row["peak_rss_mib"] < TARGET_MIB
        rows.append(row)
        print(table([row], list(row)), flush=True)
    cols = ["model", "params_B", "macs", "nodes", "output_rf", "local_rf", "analyze_s", "rss_after_import_mib",
            "rss_after_build_mib", "peak_rss_mib", "met"]
    print()
    print(table(rows, cols))
    for r in rows:
        if "init_check" in r:
            print(f"{r['model']}: init check -> {r['init_check']}")
    write(a.out, {"benchmark": "giant", "target_peak_rss_mib": TARGET_MIB, "rows": rows})


if __name__ == "__main__":
    main()
