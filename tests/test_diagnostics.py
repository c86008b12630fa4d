"""Design warnings: gridding of dilated stacks and checkerboard of transposed convs.

Expected values are hand-derived (docs/design.md §1) or come from a gradient /
real-convolution oracle, never from rfscope itself.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.passes.diagnostics import transposed_taps


def _dilated(rates: tuple[int, ...], c: int = 4) -> nn.Sequential:
    return nn.Sequential(*[nn.Conv2d(c, c, 3, padding=r, dilation=r) for r in rates])


def _support_1d(rates: tuple[int, ...], k: int = 3) -> list[int]:
    """Gradient oracle: input offsets that reach the centre unit of stacked all-ones dilated 1-D convs."""
    x = torch.ones(1, 1, 101, dtype=torch.float64, requires_grad=True)
    y = x
    for r in rates:
        y = F.conv1d(y, torch.ones(1, 1, k, dtype=torch.float64), dilation=r)
    y[0, 0, y.shape[-1] // 2].backward()
    assert x.grad is not None
    nz = torch.nonzero(x.grad[0, 0]).flatten().tolist()
    return [i - nz[0] for i in nz]


def test_gridding_222_warns_once_with_holes() -> None:
    rep = rfscope.analyze(_dilated((2, 2, 2)), input_shape=(1, 4, 32, 32))
    rf = rep.rf("2")
    assert rf.size == (13, 13)
    assert rf.coverage == (pytest.approx(7 / 13), pytest.approx(7 / 13))
    seen = _support_1d((2, 2, 2))
    assert seen == [0, 2, 4, 6, 8, 10, 12]  # oracle
    assert [w.id for w in rep.warnings] == ["gridding"]
    w = rep.warnings[0]
    assert w.layer == "2" and w.evidence["chain"] == ["0", "1", "2"]
    expected_holes = [i for i in range(13) if i not in seen]
    assert w.evidence["holes"] == [expected_holes, expected_holes]
    assert w.evidence["dilations"] == [[2, 2]] * 3
    assert "7 of the 13" in w.message


def test_hybrid_125_is_clean() -> None:
    rep = rfscope.analyze(_dilated((1, 2, 5)), input_shape=(1, 4, 32, 32))
    assert rep.rf("2").size == (17, 17)
    assert _support_1d((1, 2, 5)) == list(range(17))
    assert rep.rf("2").coverage == (1, 1)
    assert rep.warnings == []


def test_later_dense_conv_fills_holes_but_dilated_chain_still_reported() -> None:
    net = nn.Sequential(*_dilated((2, 2, 2)), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    rep = rfscope.analyze(net, input_shape=(1, 4, 32, 32))
    assert rep.rf("4").size == (15, 15) and rep.rf("4").coverage == (1, 1)
    assert [w.layer for w in rep.warnings] == ["2"]


def test_gridding_along_one_dim_only() -> None:
    net = nn.Conv2d(2, 2, 3, padding=(1, 3), dilation=(1, 3))
    rep = rfscope.analyze(nn.Sequential(net), input_shape=(1, 2, 16, 16))
    (w,) = rep.warnings
    assert w.evidence["holes"] == [[], [1, 2, 4, 5]]
    assert "spatial dim 1" in w.message


def _taps_oracle(k: int, s: int, p: int, d: int = 1) -> tuple[int, ...]:
    """Run a real all-ones transposed conv on an all-ones input; interior values count the taps."""
    y = F.conv_transpose1d(torch.ones(1, 1, 40), torch.ones(1, 1, k), stride=s, padding=p, dilation=d)
    mid = (y.shape[-1] // 2) // s * s
    return tuple(int(v) for v in y[0, 0, mid:mid + s])


@pytest.mark.parametrize(("k", "s", "p", "d"), [(3, 2, 1, 1), (4, 2, 1, 1), (2, 2, 0, 1), (5, 3, 1, 1),
                                                (3, 2, 0, 2), (1, 2, 0, 1)])
def test_transposed_taps_match_real_conv(k: int, s: int, p: int, d: int) -> None:
    # the oracle's phase 0 is output index `mid`, a multiple of s, like transposed_taps' phase 0
    assert transposed_taps(k, s, p, d) == _taps_oracle(k, s, p, d)


@pytest.mark.parametrize(("k", "s", "p", "warn"), [(3, 2, 1, True), (4, 2, 1, False), (2, 2, 0, False),
                                                   (5, 2, 2, True)])
def test_checkerboard(k: int, s: int, p: int, warn: bool) -> None:
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ConvTranspose2d(4, 4, k, s, p))
    rep = rfscope.analyze(net, input_shape=(1, 4, 8, 8))
    ids = [w.id for w in rep.warnings]
    assert ids == (["checkerboard"] if warn else [])
    if warn:
        ev = rep.warnings[0].evidence
        assert ev["taps_per_phase"][0] == list(_taps_oracle(k, s, p))
        assert len(set(ev["phase_sizes"][0])) > 1


def test_resize_then_conv_and_functional_transposed() -> None:
    up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4, 4, 3, padding=1))
    assert rfscope.analyze(up, input_shape=(1, 4, 8, 8)).warnings == []

    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4, 4, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv_transpose2d(x, self.w, stride=2, padding=1)

    rep = rfscope.analyze(Fn(), input_shape=(1, 4, 8, 8))
    assert [w.id for w in rep.warnings] == ["checkerboard"]


def test_warnings_in_json_and_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "m.py"
    f.write_text(
        "import torch.nn as nn\ninput_shape = (1, 4, 32, 32)\n"
        "model = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=2, dilation=2) for _ in range(3)])\n"
    )
    r = CliRunner().invoke(main, ["analyze", str(f)])
    assert r.exit_code == 0, r.output
    assert "warning [gridding] 2:" in r.output
    r = CliRunner().invoke(main, ["analyze", str(f), "--format", "json"])
    d = json.loads(r.output)
    (w,) = d["warnings"]
    assert w["id"] == "gridding" and w["node"] == "_2" and w["evidence"]["n_holes"] == [6, 6]
    last = [n for n in d["nodes"] if n["name"] == "_2"][0]
    assert last["rf"]["coverage"] == [pytest.approx(7 / 13)] * 2


def test_two_gridded_stacks_separated_by_a_dense_conv_warn_twice() -> None:
    net = nn.Sequential(*_dilated((2, 2)), nn.Conv2d(4, 4, 3, padding=1), *_dilated((13,)))
    rep = rfscope.analyze(net, input_shape=(1, 4, 64, 64))
    # rates 2,2: {0,2,4,6,8} of 9 (holes 1,3,5,7); the 3x3 fills them: dense 11;
    # rate 13 on a dense 11: {0..10} + {13..23} + {26..36}: holes 11,12,24,25
    assert rep.rf("2").coverage == (1, 1)
    assert [(w.layer, w.evidence["chain"]) for w in rep.warnings] == [("1", ["0", "1"]), ("3", ["3"])]
    assert rep.warnings[0].evidence["holes"][0] == [1, 3, 5, 7]
    assert rep.warnings[1].evidence["holes"][0] == [11, 12, 24, 25]
    assert _support_1d((2, 2)) == [0, 2, 4, 6, 8]


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


def test_gridding_through_global_se_uses_the_local_rf() -> None:
    net = nn.Sequential(nn.Conv2d(4, 4, 1), _SE(4), *_dilated((2, 2, 2)))
    rep = rfscope.analyze(net, input_shape=(1, 4, 32, 32))
    assert rep.rf("4").status == "global"
    (w,) = rep.warnings
    assert w.id == "gridding" and w.evidence["holes"][0] == [1, 3, 5, 7, 9, 11]


def test_dilated_maxpool_grids_too() -> None:
    net = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, dilation=2), nn.MaxPool2d(3, stride=1, padding=1,
                                                                                         dilation=2))
    rep = rfscope.analyze(net, input_shape=(1, 2, 16, 16))
    (w,) = rep.warnings
    assert w.layer == "1" and w.evidence["holes"][0] == [1, 3, 5, 7]


def test_failing_check_becomes_an_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import rfscope.passes.diagnostics as diag

    def boom(*_a: object) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(diag, "_checkerboard", boom)
    rep = rfscope.analyze(_dilated((2, 2, 2)), input_shape=(1, 4, 16, 16))
    assert [w.id for w in rep.warnings] == ["gridding"]
    assert any("checkerboard" in e and "boom" in e for e in rep.errors)


@pytest.mark.parametrize("trace", ["export", "make_fx"])
def test_warnings_on_aten_graphs(trace: str) -> None:
    """torch.export / make_fx graphs call aten.conv2d / aten.convolution / aten.max_pool2d*."""
    net = nn.Sequential(*_dilated((2, 2, 2)), nn.ConvTranspose2d(4, 4, 3, 2, 1), nn.ConvTranspose2d(4, 4, 4, 2, 1),
                        nn.MaxPool2d(3, 1, 1, dilation=2), nn.MaxPool2d(3, 1, 1, dilation=2))
    rep = rfscope.analyze(net, input_shape=(1, 4, 16, 16), trace=trace)
    assert trace in rep.trace_path
    ids = [(w.id, w.layer.split("/")[0]) for w in rep.warnings]
    assert ids == [("gridding", "2"), ("checkerboard", "3")]  # the max-pools see a dense RF by then
    assert rep.warnings[0].evidence["holes"][0] == [1, 3, 5, 7, 9, 11]
    pools = nn.Sequential(nn.MaxPool2d(3, 1, 1, dilation=2), nn.MaxPool2d(3, 1, 1, dilation=2))
    rep = rfscope.analyze(pools, input_shape=(1, 4, 16, 16), trace=trace)
    (w,) = rep.warnings
    assert w.evidence["holes"][0] == [1, 3, 5, 7] and len(w.evidence["chain"]) == 2
