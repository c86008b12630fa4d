"""rfscope against the tools users would otherwise pick, on the same models.

Peers (install them in the benchmark environment only; a missing one is skipped):
``torchinfo.summary``, ``torchscan.crawl_module``, fvcore's ``FlopCountAnalysis``
+ ``parameter_count``.  The peers run the model on real CPU tensors; rfscope
propagates shapes on meta.  For each model and input size the four are timed
alternately in one process; the table gives rfscope's time as a ratio to each
peer (< 1: rfscope is faster) and each tool's parameter count, MACs and (where
the tool has one) the receptive field of the last spatial layer.

    pip install torchinfo torchscan fvcore
    python benchmarks/peers.py [--models resnet50,mobilenet_v3_large] [--sizes 224,1024] [--reps 3]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from _common import interleave, median, parser, table, write

import rfscope

warnings.filterwarnings("ignore")
logging.getLogger("fvcore").setLevel(logging.ERROR)


Runner = Callable[[torch.nn.Module, tuple[int, ...]], dict[str, Any]]


def _skipped(pkg: str) -> Runner | None:
    """No runner: ``pkg`` is not installed (said once, on stdout)."""
    print(f"{pkg} not installed: skipped (pip install {pkg})")
    return None


def _torchinfo() -> Runner | None:
    try:
        import torchinfo
    except ImportError:
        return _skipped("torchinfo")

    def run(m: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
        s = torchinfo.summary(m, input_size=shape, verbose=0, device="cpu")
        return {"params": s.total_params, "macs": s.total_mult_adds}

    return run


def _torchscan() -> Runner | None:
    try:
        import torchscan
    except ImportError:
        return _skipped("torchscan")

    def run(m: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
        info = torchscan.crawl_module(m, shape[1:])
        if hasattr(info, "to_dict"):
            info = info.to_dict()
        tot = info["totals"]
        rf = None
        for layer in info["layers"]:  # last convolution that reports a receptive field
            r = layer.get("metrics", {}).get("receptive_field")
            if r and r.get("status") == "complete" and str(layer.get("type", "")).startswith("Conv"):
                rf = (layer["path"], r["value"])
        macs = tot["macs"]
        return {"params": tot["parameters"]["value"], "rf": rf,
                "macs": macs["value"] if macs["value"] is not None else f"partial: {macs['known_value']}"}

    return run


def _fvcore() -> Runner | None:
    try:
        from fvcore.nn import FlopCountAnalysis, parameter_count
    except ImportError:
        return _skipped("fvcore")

    def run(m: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
        f = FlopCountAnalysis(m, torch.zeros(shape))
        f.unsupported_ops_warnings(False)
        f.uncalled_modules_warnings(False)
        # fvcore's "flops" are fused multiply-adds for conv/linear/matmul
        return {"params": parameter_count(m)[""], "macs": int(f.total()),
                "unsupported": sorted(f.unsupported_ops())}

    return run


def _rfscope(m: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    r = rfscope.analyze(m, input_shape=shape)
    sm = r.summary
    return {"params": sm.params_total, "macs": sm.macs, "report": r}


def build(name: str) -> torch.nn.Module:
    return getattr(torchvision.models, name)(weights=None).eval()


def main() -> None:
    ap = parser(__doc__, "peers.json")
    ap.add_argument("--models", default="resnet50,mobilenet_v3_large")
    ap.add_argument("--sizes", default="224,1024")
    a = ap.parse_args()
    a.reps = max(a.reps, 1)
    peers = {k: f for k, f in (("torchinfo", _torchinfo()), ("torchscan", _torchscan()), ("fvcore", _fvcore()))
             if f is not None}
    rows, counts = [], []
    torch.set_grad_enabled(False)
    for name in a.models.split(","):
        m = build(name)
        for size in (int(s) for s in a.sizes.split(",")):
            shape = (1, 3, size, size)
            fns: dict[str, Callable[[], Any]] = {"rfscope": lambda m=m, s=shape: _rfscope(m, s)}
            results: dict[str, Any] = {"rfscope": _rfscope(m, shape)}
            for p, f in peers.items():
                try:
                    results[p] = f(m, shape)
                    fns[p] = lambda f=f, m=m, s=shape: f(m, s)
                except Exception as e:  # noqa: BLE001
                    results[p] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                    print(f"{p} failed on {name}@{size}: {results[p]['error']}")
            t = interleave(fns, reps=a.reps, warmup=0)
            rf_med = median(t["rfscope"])
            row: dict[str, Any] = {"model": name, "size": size, "rfscope_s": rf_med}
            for p in peers:
                if p in t:
                    row[f"{p}_s"] = median(t[p])
                    row[f"rfscope/{p}"] = rf_med / median(t[p])
            rows.append(row)
            rep = results["rfscope"].pop("report")
            for tool, res in results.items():
                c: dict[str, Any] = {"model": name, "size": size, "tool": tool, **res}
                ts_rf = results.get("torchscan", {}).get("rf")
                if tool == "rfscope" and ts_rf:
                    try:
                        rf = rep.rf(ts_rf[0])
                        c["rf"] = (ts_rf[0], rf.size[0] if rf.status != "unknown" else rf.status, rf.status)
                    except Exception as e:  # noqa: BLE001
                        c["rf"] = f"{type(e).__name__}: {e}"
                counts.append(c)
            print(table([row], list(row)), flush=True)
    print()
    cols = ["model", "size", "rfscope_s"] + [k for p in peers for k in (f"{p}_s", f"rfscope/{p}")]
    print(table(rows, cols))
    print()
    print(table(counts, ["model", "size", "tool", "params", "macs", "rf", "error"]))
    write(a.out, {"benchmark": "peers", "reps": a.reps, "rows": rows, "counts": counts})


if __name__ == "__main__":
    main()
