"""examples/plugin_deformable.py: one plugin file gives RF, MACs, conv kind, separable blocks, gridding.

Expected values come from outside rfscope: the gradient oracle (tests/oracle.py, which runs the
layer's real space-to-batch forward), hand-derived formulas, and torch's own FLOP counter.
The last tests are negative controls: without the plugin, or without its geometry or init view,
the same checks come out differently, so each of them depends on the part it tests.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from masks import check_node
from oracle import Oracle
from torch.utils.flop_counter import FlopCounterMode

import rfscope
from rfscope.plugin import Registry

EX = Path(__file__).resolve().parent.parent / "examples" / "plugin_deformable.py"
_spec = importlib.util.spec_from_file_location("plugin_deformable", EX)
assert _spec is not None and _spec.loader is not None
ex: Any = importlib.util.module_from_spec(_spec)
sys.modules["plugin_deformable"] = ex
_spec.loader.exec_module(ex)


def registry(**parts: Any) -> Registry:
    """The example's plugin; ``parts`` replace its rf/macs/geometry/init_view (``None`` drops one)."""
    reg = Registry()
    if not parts:
        ex.register(reg)
        return reg
    kw = dict(rf=ex.receptive_field, macs=ex.macs, geometry=ex.geometry, init_view=ex.init_view) | parts
    reg.add("example.atrous_conv2d", [ex.AtrousConv2d], **kw)
    return reg


def net(rates: tuple[int, int] = (2, 2)) -> nn.Module:
    """The example's model with other dilation rates (module paths 2.0 / 3.0 as there)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         ex.separable(16, 32, rates[0]), ex.separable(32, 32, rates[1]), nn.Conv2d(32, 5, 1))


def clip(px: list[int], n: int) -> list[int]:
    return [p for p in px if 0 <= p < n]


def test_layer_computes_a_dilated_conv() -> None:
    m = ex.AtrousConv2d(4, 6, 5, 3, groups=2)
    x = torch.randn(2, 4, 20, 23)
    ref = F.conv2d(x, m.weight, m.bias, padding=6, dilation=3, groups=2)
    torch.testing.assert_close(m(x), ref)


# ---------------------------------------------------------------- RF against the oracle
@pytest.mark.parametrize(("k", "d", "groups", "size"), [(3, 2, 4, (15, 16)), (5, 3, 2, (20, 23)), (3, 1, 1, (9, 9))])
def test_single_layer_rf_matches_oracle(k: int, d: int, groups: int, size: tuple[int, int]) -> None:
    m = nn.Sequential(ex.AtrousConv2d(4, 4, k, d, groups=groups))  # the root module is always traced through
    shape = (1, 4, *size)
    r = rfscope.analyze(m, input_shape=shape, registry=registry()).rf("output")
    assert r.status == "exact"
    p = d * (k - 1) // 2
    # hand: one k-tap conv dilated by d: size d(k-1)+1, stride 1, padding p
    assert r.size == (d * (k - 1) + 1,) * 2 and r.stride == (1, 1) and r.padding == (p, p)
    units = [(0, 0), (size[0] - 1, size[1] - 1), (size[0] // 2, size[1] // 2), (1, size[1] - 2), (size[0] - 2, 2)]
    orc = Oracle(m, shape, batch=len(units))
    for u, got in zip(units, orc.supports(units), strict=True):
        # hand: unit o sees pixels o - p + t*d, t = 0..k-1, those inside the image
        hand = tuple(clip([u[a] - p + t * d for t in range(k)], size[a]) for a in range(2))
        assert list(got) == list(hand), (u, got, hand)
        assert list(got) == [clip(px, n) for px, n in zip(r.pixels(u), size, strict=True)], u


def test_model_rf_matches_oracle_with_holes() -> None:
    shape = (1, 3, 48, 48)
    r = rfscope.analyze(net(), input_shape=shape, registry=registry()).rf("3.0")
    # hand: stem r=3 j=2 P=1; each 3x3 d=2 layer adds d(k-1)j = 8 -> 11, 19; P = 1 + 4 + 4
    assert r.status == "exact" and r.size == (19, 19) and r.stride == (2, 2) and r.padding == (9, 9)
    units = [(12, 12), (12, 13), (6, 18), (0, 0), (23, 23)]
    orc = Oracle(net(), shape, "3.0", batch=len(units))
    got = orc.supports(units)
    # hand: an interior unit sees {0,1,2} (stem) + {0,4,8} + {0,4,8} (taps 4 pixels apart):
    # offsets {0..18} minus {3, 7, 11, 15} from 2*12 - 9 = 15; 15 of 19 pixels
    seen = [15 + o for o in range(19) if o % 4 != 3]
    assert list(got[0]) == [seen, seen]
    assert list(got[1]) == [seen, [s + 2 for s in seen]]
    for u, g in zip(units[:3], got[:3], strict=True):  # windows inside the image: pixel for pixel
        assert list(g) == list(r.pixels(u)), u
    # at the border, paths through an inner layer's zero padding are cut (rfscope counts them, as
    # the RF literature does), so only the edges are compared: the first unit's last pixel
    # r - 1 - P = 9, the last unit's first pixel 2*23 - P = 37
    assert [a[-1] for a in got[3]] == [hi for _lo, hi in r.window(units[3])] == [9, 9]
    assert [a[0] for a in got[4]] == [lo for lo, _hi in r.window(units[4])] == [37, 37]


# ---------------------------------------------------------------- MACs, anatomy, blocks, warning
def test_macs_match_formula_and_torch_flop_counter() -> None:
    m = ex.AtrousConv2d(4, 6, 5, 3, groups=2)
    rep = rfscope.analyze(nn.Sequential(m), input_shape=(2, 4, 20, 23), registry=registry())
    rec = rep.records[rep.node_name("0")]
    hand = 2 * 6 * 20 * 23 * (4 // 2) * 5 * 5  # N * C_out * H * W * C_in/groups * k*k
    with FlopCounterMode(display=False) as fc:  # torch counts 2 FLOPs per MAC of the equivalent conv
        F.conv2d(torch.zeros(2, 4, 20, 23), m.weight, None, padding=6, dilation=3, groups=2)
    assert rec.macs == hand == fc.get_total_flops() // 2
    rep = rfscope.analyze(net(), input_shape=ex.input_shape, registry=registry())
    assert rep.records[rep.node_name("2.0")].macs == 1 * 16 * 32 * 32 * 1 * 9
    assert rep.records[rep.node_name("3.0")].macs == 1 * 32 * 32 * 32 * 1 * 9


@pytest.mark.parametrize(("c_in", "groups", "kind"), [(8, 8, ["depthwise", "dilated"]),
                                                      (8, 2, ["grouped", "dilated"]),
                                                      (8, 1, ["standard", "dilated"])])
def test_conv_kind(c_in: int, groups: int, kind: list[str]) -> None:
    rep = rfscope.analyze(nn.Sequential(ex.AtrousConv2d(c_in, 8, 3, 2, groups=groups)), input_shape=(1, c_in, 16, 16),
                          registry=registry())
    assert rep.records[rep.node_name("0")].conv_kind == kind


def test_separable_blocks() -> None:
    rep = rfscope.analyze(net(), input_shape=ex.input_shape, registry=registry())
    blocks = [(rep.records[b.depthwise].label, rep.records[b.pointwise].label, b.c_in, b.c_out, b.params)
              for b in rep.separable_blocks]
    # hand: weights 16*1*3*3 + 32*16 and 32*1*3*3 + 32*32
    assert blocks == [("2.0", "2.2", 16, 32, 144 + 512), ("3.0", "3.2", 32, 32, 288 + 1024)]


def test_gridding_warning() -> None:
    rep = rfscope.analyze(net(), input_shape=ex.input_shape, registry=registry())
    assert [(w.id, w.layer) for w in rep.warnings] == [("gridding", "3.0")]
    assert rep.warnings[0].evidence["holes"] == [[3, 7, 11, 15]] * 2  # the oracle's holes, above
    # rates 1, 2: the stem + first layer fill 7 pixels, more than the taps' gap of 4: dense
    assert rfscope.analyze(net((1, 2)), input_shape=ex.input_shape, registry=registry()).warnings == []


def test_init_view() -> None:
    m = net()
    with torch.no_grad():
        m[2][0].weight.mul_(100)
    found = rfscope.check_init(m, input_shape=ex.input_shape, registry=registry())
    assert [(f.check, f.param) for f in found] == [("scale", "2.0.weight")]


def test_main_block(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EX), run_name="__main__")
    out = capsys.readouterr().out
    assert "without the plugin: RF(status='exact', size<=(19, 19), per-position table)" in out
    assert "warning [gridding] 3.0" in out
    assert "separable block 2.0 ['depthwise', 'dilated'] -> 2.2 ['pointwise']" in out


# ---------------------------------------------------------------- negative controls
def test_without_the_plugin_the_tables_follow_the_space_to_batch() -> None:
    """No plugin: fx traces the space-to-batch (pad, fold the phases into the batch, conv, unfold)
    and the per-position tables follow it exactly, the dilation's holes included (against the
    oracle); but the inner conv looks undilated: no anatomy, separable blocks or gridding warning."""
    m = net()
    rep = rfscope.analyze(m, input_shape=ex.input_shape)
    assert check_node(rep, Oracle(m, ex.input_shape, module=["3.0"]), "3.0", n=8) == "exact"
    assert rep.rf("3.0").table is not None
    assert rep.separable_blocks == [] and rep.warnings == []


def test_without_geometry_no_anatomy_blocks_or_warning() -> None:
    rep = rfscope.analyze(net(), input_shape=ex.input_shape, registry=registry(geometry=None))
    assert rep.rf("3.0").size == (19, 19)  # the RF still comes from the plugin's rf
    assert rep.records[rep.node_name("2.0")].conv_kind is None
    assert rep.separable_blocks == [] and rep.warnings == []


def test_without_init_view_the_weights_are_not_judged() -> None:
    m = net()
    with torch.no_grad():
        m[2][0].weight.mul_(100)
    assert rfscope.check_init(m, input_shape=ex.input_shape, registry=registry(init_view=None)) == []
