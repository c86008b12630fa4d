"""A plugin of your own, in one file: an atrous convolution computed by space-to-batch.

    python examples/plugin_deformable.py     # the table, the gridding warning, the separable blocks

``AtrousConv2d`` is the kind of layer a project writes for itself: a k x k convolution dilated by
``d``, computed the way TensorFlow's ``atrous_conv2d`` does it (pad, fold the ``d*d`` phases of the
image into the batch, run a dense conv, unfold).  ``torch.fx`` traces that forward into
pad/reshape/permute/conv2d/reshape/slice; rfscope follows that through per-position tables and
gets the exact pixels, the dilation's holes included, but as a table per position, and the inner
``conv2d`` looks like an undilated conv on a batch of sub-images: no convolution anatomy, no
gridding warning and no separable block.

The plugin says what the layer *is*.  Registered for the class, it also keeps the module a leaf of
the traced graph (rfscope never looks inside).  Each part is optional and gives one thing:

* ``rf``: the exact receptive field, from the RF algebra (``rf.conv`` per spatial dim);
* ``macs``: multiply-accumulates, ``N*C_out*H_out*W_out * C_in/groups * k*k``;
* ``geometry``: a :class:`Geometry`, from which rfscope derives the convolution anatomy
  (``["depthwise", "dilated"]``), depthwise-separable blocks and the gridding diagnostic;
* ``init_view``: the weights the initialisation check (``check_init``) judges.

Use it with a registry of your own (the built-ins plus this plugin; the global one is untouched)::

    reg = Registry()
    register(reg)
    rfscope.analyze(model, input_shape=(1, 3, 64, 64), registry=reg)

or ship it in your package, and every analysis (the CLI too) loads it, via ``pyproject.toml``::

    [project.entry-points."rfscope.plugins"]
    my_pkg = "my_pkg.atrous:register"

A true *deformable* conv samples at offsets computed from its input, so a unit may see any pixel:
its honest plugin returns ``global_over(...)`` or raises ``Unsupported("offsets are data-dependent")``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import rfscope
from rfscope import InitContext, WeightView
from rfscope.plugin import Geometry, OpContext, Registry, TensorRF, local, rf

input_shape = (1, 3, 64, 64)


class AtrousConv2d(nn.Module):
    """``F.conv2d(x, w, b, padding=d*(k-1)//2, dilation=d, groups=groups)`` by space-to-batch (stride 1)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, dilation: int = 2, groups: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.dilation, self.groups = k, dilation, groups
        self.padding = dilation * (k - 1) // 2
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, p, reach = self.dilation, self.padding, self.dilation * (self.kernel_size - 1)
        n, c, h, w = x.shape
        hp, wp = h + 2 * p, w + 2 * p
        hd, wd = -(-hp // d), -(-wp // d)  # padded size in blocks of d, rounded up
        x = F.pad(x, (p, p + wd * d - wp, p, p + hd * d - hp))
        x = x.reshape(n, c, hd, d, wd, d).permute(0, 3, 5, 1, 2, 4).reshape(n * d * d, c, hd, wd)
        y = F.conv2d(x, self.weight, self.bias, groups=self.groups)  # dense taps on each phase
        co, oh, ow = y.shape[1], y.shape[2], y.shape[3]
        y = y.reshape(n, d, d, co, oh, ow).permute(0, 3, 4, 1, 5, 2).reshape(n, co, oh * d, ow * d)
        return y[:, :, : hp - reach, : wp - reach]


# ---------------------------------------------------------------- the plugin
def geometry(ctx: OpContext) -> Geometry:
    """Read the layer once; the passes take everything else from this record."""
    m = ctx.module  # a copy of the user's module: read attributes and shapes, never compute
    assert isinstance(m, AtrousConv2d)
    k, d, p = m.kernel_size, m.dilation, m.padding
    return Geometry("conv", kernel=(k, k), stride=(1, 1), padding=(p, p), dilation=(d, d),
                    groups=m.groups, weight_shape=tuple(m.weight.shape))


def receptive_field(ctx: OpContext) -> TensorRF:
    """Each of the last two dims: a k-tap conv, stride 1, left padding p, dilation d."""
    g = geometry(ctx)
    return local(ctx, {dim: (lambda a, i=i: rf.conv(a, g.kernel[i], g.stride[i], g.padding[i], g.dilation[i]))
                       for i, dim in enumerate((-2, -1))})


def macs(ctx: OpContext) -> int:
    """Every output element sums C_in/groups * k*k products."""
    ws = geometry(ctx).weight_shape
    assert ws is not None
    return math.prod(ctx.out_shape) * math.prod(ws[1:])


def init_view(ctx: InitContext) -> WeightView:
    """Units are output channels (weight dim 0), inputs are dim 1, split into ``groups``."""
    m = ctx.module
    assert isinstance(m, AtrousConv2d)
    return WeightView(m.weight, m.bias, ctx.name(m.weight) or "weight", ctx.name(m.bias), 0, 1, m.groups)


def register(registry: Registry) -> None:
    """The entry point: ``registry.add`` refuses a second plugin for the class (unless ``override=True``)."""
    registry.add("example.atrous_conv2d", [AtrousConv2d], rf=receptive_field, macs=macs, geometry=geometry,
                 init_view=init_view)


# ---------------------------------------------------------------- a model that uses it
def separable(c: int, c_out: int, dilation: int) -> nn.Sequential:
    """Depthwise atrous 3x3, then a pointwise 1x1: a depthwise-separable block."""
    return nn.Sequential(AtrousConv2d(c, c, 3, dilation, groups=c), nn.ReLU(), nn.Conv2d(c, c_out, 1), nn.ReLU())


def model() -> nn.Module:
    """A stride-2 stem, then two blocks dilated by 2: taps 4 pixels apart that a 3-wide stem cannot fill."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         separable(16, 32, 2), separable(32, 32, 2), nn.Conv2d(32, 5, 1))


if __name__ == "__main__":
    net = model()
    print("without the plugin:", rfscope.analyze(net, input_shape=input_shape).rf("output"), "\n")
    reg = Registry()
    register(reg)
    report = rfscope.analyze(net, input_shape=input_shape, registry=reg)
    print(report.table())  # ends with the design warnings: gridding at 3.0
    for b in report.separable_blocks:
        dw, pw = report.records[b.depthwise], report.records[b.pointwise]
        print(f"separable block {dw.label} {dw.conv_kind} -> {pw.label} {pw.conv_kind}: "
              f"{b.params} weights instead of {b.standard_params}")
