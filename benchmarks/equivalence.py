"""Prove that a change changes nothing: dump every torchvision model's analysis, compare dumps.

For each model (built on ``meta`` unless ``--real``): a hash of ``report.to_json()``, every
node's RF state, every node's propagated shape, strides and dtype, the design warnings, the
table, and the fields of ``report.to_dict()`` that carry meaning, one per dump field
(``doc.nodes.<field>``: per node RF, shape, params, MACs, conv kind...; ``doc.<key>``: summary,
modules, outputs, separable blocks, warnings...).  Run it before and after a change and compare::

    python benchmarks/equivalence.py dump before.json            # on the old code
    python benchmarks/equivalence.py dump after.json             # on the new code
    python benchmarks/equivalence.py compare before.json after.json [--detail 5]

The script reads only what every rfscope version has (``analyze``, ``records[...].state``,
``gm``, ``warnings``, ``table()``, ``to_dict()``), so the same script dumps old and new code.
``compare`` prints every model and field that differs (with the first differing nodes) and
exits 1 if any does.  A field that only one dump has (a dump made by an older version of this
script) is listed as not compared, not as a difference.  The JSON hash changes with any
deliberate change of the JSON format: the ``doc.*`` fields then say what changed.  Detection
models and RAFT are skipped (they need image lists / two inputs).
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


def _doc(d: dict[str, Any]) -> dict[str, Any]:
    """``report.to_dict()`` as dump fields: one per node attribute (keyed by node), one per other key."""
    out: dict[str, Any] = {}
    for key, v in d.items():
        if key == "nodes":
            for node in v:
                for f, x in node.items():
                    if f != "name":
                        out.setdefault(f"doc.nodes.{f}", {})[node["name"]] = x
        else:
            out[f"doc.{key}"] = v
    return out


def _perturb(model: torch.nn.Module) -> None:
    """Spoil the init deterministically so the init check has something to find: of the weight
    matrices/kernels in order, every third is set constant (symmetric units), the next scaled by 8."""
    with torch.no_grad():
        ws = [p for p in model.parameters() if p.dim() > 1]
        for i, w in enumerate(ws):
            if i % 3 == 0:
                w.fill_(0.05)
            elif i % 3 == 1:
                w.mul_(8.0)


def dump(path: str, real: bool, only: list[str], init: bool = False, perturb: bool = False) -> None:
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
            if perturb:
                _perturb(model)
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
            **_doc(r.to_dict()),
            "json": hashlib.sha256(r.to_json().encode()).hexdigest(),
            "trace_path": r.trace_path,
            "states": {k: str(rec.state) for k, rec in r.records.items()},
            "layouts": {n.name: _layout(n.meta.get("val")) for n in r.gm.graph.nodes},
            "warnings": [str(w) for w in r.warnings],
            "table": r.table(),
        }
        rec0 = next(iter(r.records.values()), None)
        for attr in ("geometry", "traits"):  # written by the interpreter pass since issue 15 (absent before)
            if rec0 is not None and hasattr(rec0, attr):
                out[name][f"records.{attr}"] = {
                    k: sorted(v) if isinstance(v, frozenset) else repr(v)
                    for k, rec in r.records.items() for v in [getattr(rec, attr)] if v}
        if init:  # the init check's findings (needs real weights): seeded, so the same run gives the same evidence
            try:
                out[name]["findings"] = [f.to_dict() for f in rfscope.check_init(model, report=r, seed=0)]
            except Exception as e:  # noqa: BLE001 - recorded like an analysis error
                out[name]["findings"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{name}: {len(r.records)} nodes, {r.trace_path}", flush=True)
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path} ({len(out)} models)")


def compare(a_path: str, b_path: str, detail: int = 1) -> int:
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    # fields each dump's format has (a model that failed to build or analyse has none of them)
    schema_a = {k for v in a.values() for k in v}
    schema_b = {k for v in b.values() for k in v}
    skipped = sorted((schema_a ^ schema_b) - {"build_error", "error"})
    if skipped:
        print(f"not compared (only in {a_path}): {sorted(set(skipped) & schema_a)}")
        print(f"not compared (only in {b_path}): {sorted(set(skipped) & schema_b)}")
    bad = 0
    by_field: dict[str, int] = {}
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            print(f"{name}: only in {'the second' if x is None else 'the first'} dump")
            bad += 1
            continue
        for field in sorted((set(x) | set(y)) - set(skipped)):
            if x.get(field) == y.get(field):
                continue
            bad += 1
            by_field[field] = by_field.get(field, 0) + 1
            fx, fy = x.get(field), y.get(field)
            if isinstance(fx, dict) and isinstance(fy, dict):
                keys = [k for k in fx if fx[k] != fy.get(k)] + [k for k in fy if k not in fx]
                print(f"{name}.{field}: {len(keys)} key(s) differ")
                for k in keys[:detail]:
                    print(f"    {k!r}: {str(fx.get(k, '<absent>'))[:200]} -> {str(fy.get(k, '<absent>'))[:200]}")
            else:
                print(f"{name}.{field}: {str(fx)[:200]!r} -> {str(fy)[:200]!r}")
    print(f"{len(set(a) | set(b))} models, {bad} difference(s)" + (f" by field: {by_field}" if by_field else ""))
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="analyse every model and write the digest")
    d.add_argument("out")
    d.add_argument("--real", action="store_true", help="build with real (random) weights instead of on meta")
    d.add_argument("--models", default="", help="comma-separated subset")
    d.add_argument("--init", action="store_true", help="also dump the init check's findings (with --real)")
    d.add_argument("--perturb", action="store_true",
                   help="spoil the weights first (every third constant, the next x8) so the init check finds something")
    c = sub.add_parser("compare", help="compare two dumps; exit 1 on any difference")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--detail", type=int, default=1, help="differing nodes shown per model and field")
    args = ap.parse_args()
    if args.cmd == "dump":
        if args.init and not args.real:
            ap.error("--init needs --real (the init check reads real weights)")
        if args.perturb and not args.real:
            ap.error("--perturb needs --real")
        dump(args.out, args.real, [m for m in args.models.split(",") if m], args.init, args.perturb)
    else:
        sys.exit(compare(args.before, args.after, args.detail))


if __name__ == "__main__":
    main()
