"""Bilinear / bicubic / linear resizing and adaptive pooling of a per-position table (CoaT's
parallel blocks resize token grids between scales; CSATv2 pools them to sizes that do not
divide): each output element sees the union of what the input elements with a non-zero weight
saw.  Checked element by element against the gradient oracle
(``tests/oracle.py``); see docs/design.md §2b."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import Oracle

import rfscope


class Resize(nn.Module):
    """4x4 patches of a 16x16 image, the grid rolled by one column (a table: column 0 sees the last
    patch column), then resized."""

    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.pool = kw.pop("pool", None)
        self.kw = kw
        self.embed = nn.Conv2d(1, 3, 4, 4)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.roll(self.embed(x), 1, dims=3)
        if self.pool is not None:
            return self.out(self.pool(g))
        return self.out(F.interpolate(g, **self.kw))


CASES = [
    dict(scale_factor=2, mode="bilinear", align_corners=False),
    dict(scale_factor=2, mode="bilinear", align_corners=True),
    dict(size=(7, 5), mode="bilinear", align_corners=False),
    dict(size=(3, 2), mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bicubic", align_corners=False),
    dict(size=(6, 9), mode="bicubic", align_corners=True),
    dict(pool=nn.Upsample(scale_factor=2, mode="bilinear")),  # the module (EfficientFormerV2's token mixer)
    dict(pool=nn.AdaptiveAvgPool2d((3, 5))),  # overlapping windows (4 -> 3), repeated ones (4 -> 5)
    dict(pool=nn.AdaptiveMaxPool2d((3, 3))),
    dict(pool=nn.AdaptiveAvgPool2d((2, 1))),
]


@pytest.mark.parametrize("kw", CASES, ids=[str(i) for i in range(len(CASES))])
def test_resized_table_matches_the_oracle(kw: dict[str, Any]) -> None:
    model = Resize(**dict(kw)).eval()
    shape = (1, 1, 16, 16)
    rep = rfscope.analyze(model, input_shape=shape)
    r = rep.rf("out")
    assert r.status == "exact", r
    o = Oracle(model, shape, module="out")
    y = o.out
    h, w = y.shape[2:]
    for i in range(h):
        for j in range(w):
            (g,) = torch.autograd.grad(y[0, 1, i, j], o.x, retain_graph=True)
            want = g[0, 0].ne(0)
            got = torch.zeros(16, 16, dtype=torch.bool)
            if r.table is not None:
                for box in r.table.boxes((0, 1, i, j)):
                    got[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
            else:  # periodic again (pooled to one column: every column is there)
                rows, cols = (torch.zeros(16, dtype=torch.bool) for _ in range(2))
                px = r.pixels((i, j))
                rows[[p for p in px[0] if 0 <= p < 16]] = True
                cols[[p for p in px[1] if 0 <= p < 16]] = True
                got = rows[:, None] & cols[None, :]
            assert torch.equal(got, want), ((i, j), r)


def test_linear_over_a_token_axis() -> None:
    """``F.interpolate(mode="linear")`` over a row of 4 tokens (16x4-pixel strips) with a class token
    in front: the class token sees nothing, so the outputs that blend only it see nothing either."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, 2, (16, 4), (16, 4))
            self.out = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).flatten(2)  # (1, 2, 4)
            t = torch.cat([torch.zeros(1, 2, 1), t], dim=2)  # (1, 2, 5)
            return self.out(F.interpolate(t, size=13, mode="linear", align_corners=False))

    model = M().eval()
    shape = (1, 1, 16, 16)
    r = rfscope.analyze(model, input_shape=shape).rf("out")
    o = Oracle(model, shape, module="out")
    assert r.table is not None, r
    seen_any = False
    for k in range(13):
        (g,) = torch.autograd.grad(o.out[0, 0, k], o.x, retain_graph=True)
        want = g[0, 0].ne(0)
        got = torch.zeros(16, 16, dtype=torch.bool)
        for box in r.table.boxes((0, 0, k)):
            got[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
        assert torch.equal(got, want), (k, r.table.boxes((0, 0, k)))
        seen_any = seen_any or not bool(want.any())
    assert seen_any  # some outputs blend only the class token: they see nothing


def test_nearest_resize_of_a_table_in_an_aten_graph() -> None:
    """``aten.upsample_nearest2d`` (a ``torch.export`` graph: MONAI's AutoencoderKL) on a table: the
    translated call must not pass ``align_corners`` to a nearest resize (it raised ValueError)."""
    model = Resize(scale_factor=2, mode="nearest").eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 16, 16), trace="export")
    assert not rep.errors, rep.errors
    r = rep.rf("output")
    assert r.table is not None, r
    o = Oracle(model, (1, 1, 16, 16), module="out")
    for i, j in [(0, 0), (3, 7), (7, 0), (5, 5)]:
        (g,) = torch.autograd.grad(o.out[0, 1, i, j], o.x, retain_graph=True)
        got = torch.zeros(16, 16, dtype=torch.bool)
        for box in r.table.boxes((0, 1, i, j)):
            got[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
        assert torch.equal(got, g[0, 0].ne(0)), (i, j)
