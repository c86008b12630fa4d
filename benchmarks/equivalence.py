"""Prove that a performance change changes nothing: dump every torchvision model's analysis, compare dumps.

For each model (built on ``meta`` unless ``--real``): a hash of ``report.to_json()``, every
node's RF state, every node's propagated shape, strides and dtype, the design warnings and the
table.  Run it before and after a change and compare::

    python benchmarks/equivalence.py dump before.json            # on the old code
    python benchmarks/equivalence.py dump after.json             # on the new code
    python benchmarks/equivalence.py compare before.json after.json

``compare`` prints every model and field that differs (with the first differing node) and
exits 1 if any does.  Detection models and RAFT are skipped (they need image lists / two inputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from typing import Any

import torch
from _common import torchvision_model

import rfscope

_SKIP = ("raft", "fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "ssd", "fcos")


def _layout(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return [list(v.shape), list(v.stride()), str(v.dtype)]
    if isinstance(v, (list, tuple)):
        return [_layout(x) for x in v]
    return type(v).__name__


def dump(path: str, real: bool, only: list[str]) -> None:
    import torchvision

    warnings.simplefilter("ignore")
    out: dict[str, Any] = {}
    for name in only or torchvision.models.list_models():
        if name.startswith(_SKIP):
            continue
        try:
            torch.manual_seed(0)
            model, shape = torchvision_model(name, meta=not real)
            model.eval()
        except Exception as e:  # noqa: BLE001 - a builder that fails here fails the same way before and after
            out[name] = {"build_error": type(e).__name__}
            continue
        try:
            r = rfscope.analyze(model, shape)
        except Exception as e:  # noqa: BLE001 - recorded: an analysis that starts or stops failing is a difference
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"{name}: {out[name]['error'][:100]}", flush=True)
            continue
        out[name] = {
            "json": hashlib.sha256(r.to_json().encode()).hexdigest(),
            "trace_path": r.trace_path,
            "states": {k: str(rec.state) for k, rec in r.records.items()},
            "layouts": {n.name: _layout(n.meta.get("val")) for n in r.gm.graph.nodes},
            "warnings": [str(w) for w in r.warnings],
            "table": r.table(),
        }
        print(f"{name}: {len(r.records)} nodes, {r.trace_path}", flush=True)
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path} ({len(out)} models)")


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    bad = 0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            print(f"{name}: only in {'the second' if x is None else 'the first'} dump")
            bad += 1
            continue
        for field in sorted(set(x) | set(y)):
            if x.get(field) == y.get(field):
                continue
            bad += 1
            fx, fy = x.get(field), y.get(field)
            if isinstance(fx, dict) and isinstance(fy, dict):
                keys = [k for k in fx if fx[k] != fy.get(k)] + [k for k in fy if k not in fx]
                print(f"{name}.{field}: {len(keys)} node(s) differ, first {keys[0]!r}: {fx.get(keys[0])!r} "
                      f"-> {fy.get(keys[0])!r}")
            else:
                print(f"{name}.{field}: {str(fx)[:120]!r} -> {str(fy)[:120]!r}")
    print(f"{len(set(a) | set(b))} models, {bad} difference(s)")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="analyse every model and write the digest")
    d.add_argument("out")
    d.add_argument("--real", action="store_true", help="build with real (random) weights instead of on meta")
    d.add_argument("--models", default="", help="comma-separated subset")
    c = sub.add_parser("compare", help="compare two dumps; exit 1 on any difference")
    c.add_argument("before")
    c.add_argument("after")
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.out, args.real, [m for m in args.models.split(",") if m])
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
