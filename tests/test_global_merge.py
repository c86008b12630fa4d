"""Local RFs behind global ops: "no local path" and "local paths misaligned" are different answers.

A global op (GroupNorm over space, an SE gate) makes every later unit ``global``; rfscope still
reports the RF through the spatially local paths.  When two such branches with different strides
meet, that local RF is not one exact value: it must be ``unknown`` with the reason, never the RF
of whichever branch joins later (the old behaviour: segmentation-models-pytorch's PAN decoder
reported a 27x27 local RF where the centre unit sees the whole 512 px input).  The gradient
oracle (GroupNorm is the identity there) gives the true local RF.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import Oracle

import rfscope


class PanLike(nn.Module):
    """The PAN decoder's pattern: stride-2 and (stride-4, bilinear x2) branches, both after a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(1, 3)
        self.c1 = nn.Conv2d(3, 4, 3, 2, 1)
        self.c2 = nn.Conv2d(4, 4, 3, 2, 1)
        self.c3 = nn.Conv2d(3, 4, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gn(x)
        a = self.c1(g)
        up = F.interpolate(self.c2(a), scale_factor=2, mode="bilinear", align_corners=True)
        return (a + up) + self.c3(g)


def test_misaligned_local_paths_are_unknown_not_one_branch() -> None:
    shape = (1, 3, 32, 32)
    r = rfscope.analyze(PanLike(), input_shape=shape).rf("output")
    assert r.status == "global"
    assert r.local is not None, "local paths exist: 'no local path' would be wrong"
    assert r.local.status == "unknown" and "misaligned" in (r.local.reason or "")
    # the answer it used to give (the last branch's 1x1) is contradicted by the oracle
    rows, cols = Oracle(PanLike(), shape).support((8, 8))
    assert len(rows) > 1 and len(cols) > 1
    d = r.to_dict()["local"]
    assert d == {"status": "unknown", "reason": r.local.reason}


class AlignedAfterNorm(nn.Module):
    """Two global branches of the same stride, then a third aligned one: the local RF is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(1, 2)
        self.a = nn.Conv2d(2, 2, 3, 2, 1)
        self.b = nn.Conv2d(2, 2, 5, 2, 2)
        self.c = nn.Conv2d(2, 2, 1, 2)
        self.d = nn.Conv2d(2, 2, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gn(x)
        return self.d((self.a(g) + self.b(g)) + self.c(x))


def test_aligned_branches_after_a_norm_keep_an_exact_local_rf() -> None:
    shape = (1, 2, 40, 40)
    r = rfscope.analyze(AlignedAfterNorm(), input_shape=shape).rf("output")
    assert r.status == "global" and r.local is not None and r.local.status == "exact"
    orc = Oracle(AlignedAfterNorm(), shape)
    for idx in ((10, 10), (9, 11)):
        assert orc.support(idx) == r.local.pixels(idx)


class SliceAfterNorm(nn.Module):
    """Slicing moves a global axis's local RF like an exact one's (a stride-2 / offset crop)."""

    def __init__(self, step: int, start: int) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(1, 2)
        self.a = nn.Conv1d(2, 2, 3, padding=1)
        self.b = nn.Conv1d(2, 2, 3)
        self.step, self.start = step, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(self.gn(x))[..., self.start::self.step])


def test_slicing_a_global_axis_moves_its_local_rf() -> None:
    shape = (1, 2, 40)
    for step, start in ((2, 0), (1, 3), (3, 1)):
        m = SliceAfterNorm(step, start)
        r = rfscope.analyze(m, input_shape=shape).rf("output")
        assert r.status == "global" and r.local is not None and r.local.status == "exact"
        orc = Oracle(m, shape)
        for i in (2, 5):
            assert orc.support((i,)) == r.local.pixels((i,)), (step, start, i)


def test_local_rf_after_global_pooling_is_none_meaning_no_local_path() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1))
    r = rfscope.analyze(net, input_shape=(1, 1, 9, 9)).rf("output")
    assert r.status == "global" and r.local is None
    assert r.to_dict()["local"] is None
