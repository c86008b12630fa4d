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


class BatchRows(nn.Module):
    """A reshape that cannot be a view of the table's columns (it merges the channels, stride 0, with
    the columns): PyTorch copies every batch row, and the rows are equal again afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.conv(x), 1, dims=2)  # a table, stride 0 along the batch and the channels
        return y.permute(0, 2, 1, 3).reshape(x.shape[0], 16, 8 * 16)


def test_table_keeps_only_its_values() -> None:
    """The result's columns are compressed back to stride 0 along the batch; they must not stay
    views of the materialised copy (64 rows of 16 x 128 values, 1 MiB per column: samvit at 1024²
    kept ~900 MB per attention block alive this way and ran out of memory)."""
    r = rfscope.analyze(BatchRows().eval(), input_shape=(64, 1, 16, 16)).rf("output")
    t = r.table
    assert t is not None
    held = {c.untyped_storage().data_ptr(): c.untyped_storage().nbytes() for p in t.parts for c in p.cols}
    assert sum(held.values()) <= 4 * 16 * 128 * 8, held  # at most one 16 x 128 core per column
    assert t.nbytes() == sum(held.values())
    assert r.window((5, 3, 2 * 16 + 0)) == ((1, 3), (0, 1))
    assert r.window((63, 0, 7 * 16 + 15)) == ((14, 15), (14, 15))


def test_owned_copies_out_of_a_larger_storage() -> None:
    big = torch.arange(64 * 4096, dtype=torch.int64).view(64, 4096)
    row = big[:1].expand(64, 4096)  # stride 0 along dim 0, but a view of all 64 rows
    own = table.owned(row)
    assert torch.equal(own, row) and own.stride() == (0, 1)
    assert own.untyped_storage().nbytes() == 4096 * 8
    most = big[:, 1:]  # shows nearly all of its storage: left as it is
    assert table.owned(most) is most
    few = big[:, :2]  # 1/2048 of it: copied
    assert torch.equal(table.owned(few), few) and table.owned(few).untyped_storage().nbytes() == 64 * 2 * 8
