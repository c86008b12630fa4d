"""Theoretical receptive field vs effective receptive field (Luo et al. 2016), per stage.

    rfscope analyze examples/rf_vs_erf.py            # deep plain conv net: RF per layer
    rfscope analyze examples/rf_vs_erf.py:resnet     # a small ResNet
    python examples/rf_vs_erf.py --out erf_maps      # RF and ERF per stage of both, heatmaps saved

The theoretical RF grows linearly with depth; the ERF (gradient of the centre unit
w.r.t. the input, RepLKNet's "high-contribution area ratio") grows more slowly, so
the fraction of the RF that really matters shrinks with depth.  Weights are the
random initialisation (seeded), inputs N(0, 1): the ERF of an *untrained* net.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

input_shape = (1, 3, 64, 64)
STAGES = ("stage1", "stage2", "stage3", "stage4")


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class _Stages(nn.Module):
    """4 stages of widths w, w, 2w, 4w built by ``stage(c_in, c_out, stride)``; stages 2-4 start with stride 2."""

    def __init__(self, width: int, stage: Callable[[int, int, int], nn.Module]) -> None:
        super().__init__()
        torch.manual_seed(0)
        c_in = 3
        for i, c in enumerate((width, width, 2 * width, 4 * width)):
            setattr(self, STAGES[i], stage(c_in, c, 1 if i == 0 else 2))
            c_in = c

    def forward(self, x):
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))


class PlainNet(_Stages):
    """Each stage 2 3x3 convs, the first one strided (no skips)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__(width, lambda c_in, c, s: nn.Sequential(*_conv_bn(c_in, c, s), *_conv_bn(c, c)))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out
                     else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class ResNet(_Stages):
    """The same stages as :class:`PlainNet`, each one residual block."""

    def __init__(self, width: int = 16) -> None:
        super().__init__(width, Block)


model = PlainNet
resnet = ResNet


def compare(out: Path | None, samples: int = 16, png: bool = True) -> list[dict[str, object]]:
    """RF and ERF of every stage of both nets; heatmaps into ``out/<net>_<stage>/``."""
    import rfscope
    from rfscope import probe

    rows: list[dict[str, object]] = []
    for name, net in (("plain", PlainNet()), ("resnet", ResNet())):
        report = rfscope.analyze(net, input_shape)
        for stage in STAGES:
            rf = report.rf(stage)
            res = probe.erf(net, stage, input_shape, samples=samples, device="cpu", progress=False,
                            report=report)
            if out is not None:
                res.save(out / f"{name}_{stage}", png=png)
            rows.append({"net": name, "stage": stage, "rf": rf.size[0], "stride": int(rf.stride[0] or 0),
                         "area_20": res.area_ratio["20%"]["ratio"], "area_99": res.area_ratio["99%"]["ratio"],
                         "sigma": res.sigma[0], "erf_rf": res.erf_rf_ratio[0]})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="directory for erf.npy / erf.json / erf.png per stage")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--no-png", action="store_true", help="save erf.npy / erf.json only")
    args = ap.parse_args(argv)
    rows = compare(args.out, args.samples, png=not args.no_png)
    print(f"{'net':<7}{'stage':<8}{'RF':>5}{'stride':>7}{'area t=20%':>12}{'area t=99%':>12}{'sigma':>7}"
          f"{'ERF/RF':>8}")
    for r in rows:
        print(f"{r['net']:<7}{r['stage']:<8}{r['rf']:>5}{r['stride']:>7}{100 * r['area_20']:>11.2f}%"  # type: ignore[operator]
              f"{100 * r['area_99']:>11.2f}%{r['sigma']:>7.2f}{r['erf_rf']:>8.3f}")  # type: ignore[operator]
    if args.out is not None:
        print(f"heatmaps: {args.out}/<net>_<stage>/erf.png")
    return rows


if __name__ == "__main__":
    main()
