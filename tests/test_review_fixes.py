"""Wrong numbers found by reviewing the change: each case was reported as a number before."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import rfscope
from rfscope.plugins.conv import _macs as conv_macs
from rfscope.plugins.conv import _rf as conv_rf


class UnbatchedInstanceNorm(nn.Module):
    """InstanceNorm1d on a (C, L) tensor: statistics over all of L (PyTorch accepts unbatched input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.norm = nn.InstanceNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)[0]).unsqueeze(0)


def test_unbatched_instance_norm_is_global_over_positions() -> None:
    r = rfscope.analyze(UnbatchedInstanceNorm(), input_shape=(1, 1, 20)).rf("output")
    # every output unit is normalised by the mean over all 18 positions: it sees the whole input
    assert r.status == "global" and r.local is not None and r.local.size == (3,)


class GatedEinsum(nn.Module):
    """out[c, m] = (sum_n a[c, n]) * b[c, m]: a gate over all positions times a local branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 2, 3, padding=1)
        self.b = nn.Conv1d(1, 2, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcn,bcm->bcm", self.a(x), self.b(x))


def test_einsum_keeps_the_local_path_of_the_operand_not_summed() -> None:
    r = rfscope.analyze(GatedEinsum(), input_shape=(1, 1, 24)).rf("output")
    # the summed operand sees everything; b's 5-tap path is the local RF, as for an SE gate
    assert r.status == "global" and r.local is not None and r.local.status == "exact" and r.local.size == (5,)


class TableFromInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table * ids.float().mean())


def test_embedding_with_an_input_dependent_table_is_unknown() -> None:
    r = rfscope.analyze(TableFromInput(), example_inputs=(torch.zeros(1, 8, dtype=torch.long),)).rf("output")
    assert r.status == "unknown" and "table depends on the input" in (r.reason or "")


def test_per_analysis_overrides_reach_the_aten_delegation() -> None:
    """An override of F.conv2d applies on the torch.export path too (the ATen plugin hands the call to the
    analysis's registry), and a fractional MAC count is rejected there, not truncated."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3))
    half = rfscope.Plugin("half-macs", (F.conv2d, torch.conv2d), rf=conv_rf, macs=lambda ctx: conv_macs(ctx) + 0.5)
    r = rfscope.analyze(net, input_shape=(1, 1, 8, 8), trace="export", plugins=[half])
    conv = next(rec for rec in r.records.values() if rec.target.startswith("aten.conv"))
    assert conv.macs is None and any("MAC" in e or "macs" in e for e in r.errors), r.errors
    plain = rfscope.analyze(net, input_shape=(1, 1, 8, 8), trace="export")
    conv = next(rec for rec in plain.records.values() if rec.target.startswith("aten.conv"))
    assert conv.macs == 36 * 9  # 6x6 outputs x 3x3 taps x 1 channel
