"""Models nested thousands of levels deep are analysed (issue: a 150-level Sequential hit the recursion
limit, a 5,000-level one an "internal error").

Each nesting level is a one-child ``nn.Sequential``; the innermost layer is one 3x3 convolution
(padding 1), so the RF is 3x3, stride 1, padding 1 whatever the depth (hand-derived).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main


def _nested(depth: int) -> nn.Module:
    m: nn.Module = nn.Conv2d(1, 1, 3, padding=1)
    for _ in range(depth):
        m = nn.Sequential(m)
    return m


@pytest.mark.parametrize("depth", [150, 5000])
def test_deeply_nested_sequential_is_analysed(depth):
    limit = sys.getrecursionlimit()
    rep = rfscope.analyze(_nested(depth), (1, 1, 16, 16))
    rf = rep.rf("output")
    assert (rf.size, rf.stride, rf.padding) == ((3, 3), (1, 1), (1, 1))
    assert rep.trace_path == "symbolic_trace"
    assert rep.summary.params_total == 10  # 9 weights + 1 bias
    assert sys.getrecursionlimit() == limit  # raised only while the deep worker ran


def test_deep_model_check_init_and_probes():
    model = _nested(1000)
    nn.init.ones_(model.get_submodule(".".join(["0"] * 1000)).weight)  # every input pixel of the window counts
    assert [f.check for f in rfscope.check_init(model, (1, 1, 16, 16))] == []
    import rfscope.probe as probe

    v = probe.validate(model, input_shape=(1, 1, 16, 16), device="cpu", grow=False)
    assert v.ok and v.checks and all(c.measured[0].size == 3 for c in v.checks)
    e = probe.erf(model, "output", (1, 1, 9, 9), samples=2, batch_size=2, progress=False, device="cpu")
    assert e.map.shape == (9, 9) and (e.map[3:6, 3:6] != 0).all() and (e.map != 0).sum() == 9  # the 3x3 window


def test_deep_model_from_the_cli(tmp_path):
    src = tmp_path / "deep.py"
    src.write_text("import torch.nn as nn\n\n"
                   "def build_model():\n"
                   "    m = nn.Conv2d(1, 1, 3, padding=1)\n"
                   "    for _ in range(2000):\n"
                   "        m = nn.Sequential(m)\n"
                   "    return m\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["analyze", str(src), "--input-shape", "1,16,16", "--format", "json"])
    assert res.exit_code == 0, res.output[-500:]
    out = json.loads(res.output)
    assert out["summary"]["params_total"] == 10
    res = CliRunner().invoke(main, ["analyze", str(src), "--input-shape", "1,16,16"])
    assert res.exit_code == 0, res.output[-500:]
    assert "internal error" not in res.output
