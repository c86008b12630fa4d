"""ERF probe throughput (images/s) on ResNet-50 at 224², against two references.

- probe:      ``rfscope.probe.erf(model, node="layer4", ...)``: batched samples, one forward and one
              input-only backward per batch (parameters do not require grad), analysis excluded
              (a precomputed report is passed; the one-off analysis time is reported separately).
- per-image:  a plain loop a user would write: one image at a time, ``model(x)`` up to layer4, the
              channel-summed centre unit, ``.backward()`` with the parameters requiring grad as usual.
- fwd+bwd:    the model's own batched forward + backward (``out.sum().backward()``, weight gradients
              included, no optimizer), same batch size: the cost of one training step without update.

All three see the same number of images of the same shape.  Usage::

    python benchmarks/probe_throughput.py [--device auto] [--samples 32] [--batch-size 16] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rfscope  # noqa: E402
from rfscope.probe.runtime import resolve_device  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=None, help="images per measurement (CPU 16, GPU 1024)")
    ap.add_argument("--batch-size", type=int, default=None, help="CPU 8, GPU 64")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--out", default="probe_throughput.json")
    args = ap.parse_args()

    import torchvision

    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    n = args.samples or (1024 if gpu else 16)
    bs = args.batch_size or (64 if gpu else 8)
    dt = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    shape = (1, 3, args.size, args.size)
    model = torchvision.models.resnet50(weights=None).eval()

    t = time.perf_counter()
    report = rfscope.analyze(model, shape)
    analysis_s = time.perf_counter() - t

    def probe() -> None:
        rfscope.probe.erf(model, node="layer4", samples=n, batch_size=bs, device=dev, dtype=dt,
                          progress=False, report=report)

    feats = torch.nn.Sequential(*list(model.children())[:-2]).to(dev, dt)  # up to layer4 (a copy's view)
    xs = torch.randn((n, *shape[1:]), device=dev, dtype=dt)

    def per_image() -> None:
        for i in range(n):
            x = xs[i:i + 1].clone().requires_grad_(True)
            y = feats(x)
            y[0, :, (y.shape[2] - 1) // 2, (y.shape[3] - 1) // 2].sum().backward()
        feats.zero_grad(set_to_none=True)

    def fwd_bwd() -> None:
        for s in range(0, n, bs):
            feats(xs[s:s + bs]).sum().backward()
        feats.zero_grad(set_to_none=True)

    methods = (("probe (rfscope.probe.erf)", probe), ("per-image loop", per_image),
               ("batched fwd+bwd (model)", fwd_bwd))
    for _, fn in methods:  # warm-up
        fn()
    _sync(dev)
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(args.repeats):  # interleaved, so a load change on a shared machine hits all three
        for name, fn in methods:
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, _ in methods:
        sec = statistics.median(times[name])
        rows.append({"method": name, "seconds": sec, "images_per_s": n / sec, "all_seconds": times[name]})
    ref = rows[2]["images_per_s"]
    for r in rows:
        r["vs_fwd_bwd"] = r["images_per_s"] / ref
    info = {
        "model": "torchvision resnet50 (weights=None), eval", "node": "layer4", "input": list(shape[1:]),
        "samples": n, "batch_size": bs, "dtype": args.dtype, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "analysis_s": analysis_s,
        "rows": rows,
    }
    print(f"ResNet-50 {args.size}x{args.size}, node layer4, {n} images, batch {bs}, {args.dtype} on {dev} "
          f"({info['device_name']}, {info['threads']} threads); one-off analysis {analysis_s:.2f} s")
    print(f"{'method':28s} {'s':>8s} {'img/s':>9s} {'vs fwd+bwd':>11s}")
    for r in rows:
        print(f"{r['method']:28s} {r['seconds']:8.2f} {r['images_per_s']:9.2f} {r['vs_fwd_bwd']:11.2f}")
    Path(args.out).write_text(json.dumps(info, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
