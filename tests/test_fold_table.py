"""``F.fold`` (col2im) on per-position tables, against the gradient oracle: VOLO's outlook attention
unfolds 3x3 neighbourhoods, mixes the slots, and folds them back (docs/design.md §2b)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import prepare

import rfscope


class UnfoldMixFold(nn.Module):
    """2x2 patches, their 3x3 neighbourhoods unfolded, the 9 slots mixed by a 1x1 conv, folded back."""

    def __init__(self, module: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 2, 2, 2)
        self.mix = nn.Conv2d(18, 18, 1)
        self.fold = nn.Fold((8, 8), 3, padding=1) if module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.unfold(self.embed(x), 3, padding=1)
        u = self.mix(u.view(1, 18, 8, 8)).view(1, 18, 64)
        return self.fold(u) if self.fold is not None else F.fold(u, (8, 8), 3, padding=1)


def _seen(rf: rfscope.RF, idx: tuple[int, ...], n: int) -> set[tuple[int, int]]:
    if rf.table is not None:
        return {(a, b) for (ya, yb), (xa, xb) in rf.table.boxes(idx)
                for a in range(max(ya, 0), min(yb, n - 1) + 1) for b in range(max(xa, 0), min(xb, n - 1) + 1)}
    rows, cols = rf.pixels(idx[2:])
    return {(a, b) for a in rows for b in cols if 0 <= a < n and 0 <= b < n}


def test_fold_after_mixing_unfolded_slots_matches_the_oracle() -> None:
    for module in (False, True):
        model = UnfoldMixFold(module)
        rf = rfscope.analyze(model, (1, 1, 16, 16)).rf("output")
        assert rf.status == "exact"
        x = torch.ones(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
        out = prepare(model)(x)
        for idx in [(0, 0, 0, 0), (0, 1, 3, 4), (0, 0, 7, 7), (0, 1, 5, 2)]:
            (g,) = torch.autograd.grad(out[idx], x, retain_graph=True)
            want = {(int(a), int(b)) for a, b in torch.nonzero(g[0, 0] != 0).tolist()}
            assert _seen(rf, idx, 16) == want, (module, idx)


def test_fold_of_an_unfold_is_the_identity_map() -> None:
    # every slot of pixel p lands back on p: the RF is the 2x2 patch embedding's (periodic again)
    class Round(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, 2, 2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.fold(F.unfold(self.embed(x), 3, padding=1), (8, 8), 3, padding=1)

    rf = rfscope.analyze(Round(), (1, 1, 16, 16)).rf("output")
    assert rf.table is None and rf.size == (2, 2) and rf.stride == (2, 2)
