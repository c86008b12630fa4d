"""The traced program is the model's program: code that tests the type of a traced value.

``torch.jit.isinstance(x, torch.Tensor)`` and ``isinstance(x, torch.Tensor)`` are False for
torch.fx's Proxy, so under ``symbolic_trace`` a skip connection guarded by such a test silently
disappears (MONAI's ``UpCat``).  rfscope notices (the test itself, the forward's source, or a graph
that fails where the model runs) and analyses the torch.export graph instead.  The reference is
the independent gradient oracle (tests/oracle.py) on the real model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from oracle import Oracle

import rfscope


class _JitSkip(nn.Module):
    """Like MONAI's UpCat: the 7x7 skip is added only if ``torch.jit.isinstance(skip, Tensor)``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 7, padding=3)

    def forward(self, x):
        y, skip = self.a(x), self.b(x)
        if torch.jit.isinstance(skip, torch.Tensor):
            y = y + skip
        return y


class _BuiltinSkipAdd(nn.Module):
    """The builtin ``isinstance``, and the skip changes no shape: only the forward's source shows it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 7, padding=3)

    def forward(self, x):
        y, skip = self.a(x), self.b(x)
        if isinstance(skip, torch.Tensor):
            y = y + skip
        return y


def _merge(y, skip):
    """The type test hides in a helper (not in a forward): the symbolic graph has 1 channel, not 3."""
    if isinstance(skip, torch.Tensor):
        return torch.cat([y, skip], 1)
    return y


class _HelperSkipCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 7, padding=3)
        self.head = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.head(_merge(self.a(x), self.b(x)))


@pytest.mark.parametrize("cls", [_JitSkip, _BuiltinSkipAdd, _HelperSkipCat])
def test_type_tested_skip_matches_the_oracle(cls):
    torch.manual_seed(0)
    model = cls()
    shape = (1, 1, 32, 32)
    rep = rfscope.analyze(model, shape)
    rf = rep.rf("output")
    support = Oracle(model, shape).support((16, 16))
    assert rf.status == "exact"
    for a in range(2):
        lo, hi = rf.window((16, 16))[a]
        assert list(range(lo, hi + 1)) == support[a], (a, rf.window((16, 16)), support)
    assert rf.size == (7, 7)  # the oracle's support, written out: 3x3 and 7x7 branches merged
    assert rep.trace_path == "torch.export"
    why = rep.trace_fallback or ""
    assert "isinstance" in why or "another program" in why


def test_forced_symbolic_trace_still_gives_the_symbolic_graph():
    """trace='symbolic_trace' is what the user asked for (the note is only for trace='auto')."""
    rep = rfscope.analyze(_JitSkip(), (1, 1, 32, 32), trace="symbolic_trace")
    assert rep.trace_path == "symbolic_trace"


def test_monai_basic_unet_uses_export():
    monai = pytest.importorskip("monai")
    net = monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)
    rep = rfscope.analyze(net, (1, 1, 64, 64))
    assert rep.trace_path == "torch.export"
    assert "torch.jit.isinstance in 'upcat_1'" in rep.trace_fallback
    cats = [n for n in rep.gm.graph.nodes if n.op == "call_function" and "aten.cat" in str(n.target)]
    assert len(cats) == 4  # the four skip connections are in the graph
    assert rep.records[rep.output_node].shape == (1, 2, 64, 64)
