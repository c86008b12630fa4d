"""A per-position table that would hold more than ``MAX_VALUES`` values per bound makes the op
``unknown`` with that reason instead of exhausting memory (docs/design.md §2b, "Cost bounds")."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import rfscope
import rfscope.core.positions as positions
import rfscope.core.table as table


class Big(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.conv(x), 1, dims=2)  # a table, stride 0 along the channels
        return y.permute(0, 2, 3, 1).reshape(1, 16 * 16 * 8)  # copies every channel's bounds


@pytest.mark.parametrize("budget,unknown", [(1 << 25, False), (500, True)])
def test_table_over_budget_is_unknown(budget: int, unknown: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "MAX_VALUES", budget)
    monkeypatch.setattr(positions, "MAX_VALUES", budget)
    r = rfscope.analyze(Big().eval(), input_shape=(1, 1, 16, 16)).rf("output")
    if unknown:
        assert r.status == "unknown" and "would hold" in (r.reason or ""), r
    else:
        assert r.table is not None and r.window((0, 8 * (16 * 3 + 5))) == ((1, 3), (4, 6)), r
