"""Exact validation: the gradient oracle agrees with the static RF, and catches a wrong plugin."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.core import rf
from rfscope.core.ops import local
from rfscope.probe import validate


def _state(model: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
    return [(k, v.detach().clone(), getattr(v, "requires_grad", False))
            for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()]


class Functional(nn.Module):
    """Functional calls the linearisation must replace: relu, max-pool, sub, neg, div, pad."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        z = F.max_pool2d(y, 3, stride=2, padding=1, ceil_mode=True)
        w = self.b(F.pad(y, (1, 2, 1, 2)))
        return torch.sigmoid(z - w / 2).neg() + x.mean() * 0


def test_small_nets_agree_and_model_untouched() -> None:
    nets = [
        nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(2, 2, 3, padding=1, dilation=2), nn.BatchNorm2d(2)),
        nn.Sequential(nn.ConvTranspose2d(1, 2, 3, stride=2), nn.GELU(), nn.Conv2d(2, 2, 3, padding=1),
                      nn.Upsample(scale_factor=2, mode="bilinear"), nn.GroupNorm(1, 2)),
        nn.Sequential(nn.Conv1d(1, 3, 5, stride=3, padding=2), nn.MaxPool1d(3, 2, dilation=2, ceil_mode=True),
                      nn.ConvTranspose1d(3, 1, 4, stride=2, padding=1), nn.Dropout(0.5)),
    ]
    nets[0].train()  # BatchNorm in train mode: the probe must still not change it
    shapes = [(1, 1, 24, 24), (1, 1, 10, 10), (1, 1, 40)]
    for net, shape in zip(nets, shapes, strict=True):
        before = _state(net)
        training = [m.training for m in net.modules()]
        res = validate(net, input_shape=shape, device="cpu")
        assert res.ok, res.table()
        assert all(c.verdict == "agree" for c in res.checks), res.table()
        after = _state(net)
        assert [(k, g) for k, _, g in before] == [(k, g) for k, _, g in after]
        assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(before, after, strict=True))
        assert training == [m.training for m in net.modules()]


def test_functional_calls_are_linearised() -> None:
    res = validate(Functional(), input_shape=(1, 2, 20, 20), nodes=["sub", "neg"], device="cpu")
    assert res.ok, res.table()
    # hand-derived: max-pool 3/2/1 after a 3x3 'same' conv -> r=5, j=2, P=2
    z = validate(Functional(), input_shape=(1, 2, 20, 20), nodes=["max_pool2d"], device="cpu")
    c = z.checks[0]
    assert c.verdict == "agree"
    assert [m.size for m in c.measured] == [5, 5]
    assert [m.stride for m in c.measured] == [2, 2]
    assert [m.padding for m in c.measured] == [2, 2]


def _random_net(rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    layers: list[nn.Module] = []
    c = 1
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "conv", "pool", "avg", "tconv", "up"])
        k, s = rng.randint(1, 4), rng.randint(1, 3)
        if kind == "conv":
            d = rng.randint(1, 3)
            layers += [nn.Conv2d(c, 2, k, stride=s, padding=rng.randint(0, (d * (k - 1)) // 2), dilation=d),
                       nn.ReLU()]
            c = 2
        elif kind == "pool":
            k = max(k, 2)
            layers.append(nn.MaxPool2d(k, s, padding=rng.randint(0, k // 2), ceil_mode=rng.random() < 0.5))
        elif kind == "avg":
            k = max(k, 2)
            layers.append(nn.AvgPool2d(k, s, padding=rng.randint(0, k // 2)))
        elif kind == "tconv":
            layers.append(nn.ConvTranspose2d(c, 2, max(k, 2), stride=min(s, max(k, 2))))
            c = 2
        else:
            layers.append(nn.Upsample(scale_factor=2, mode=rng.choice(["nearest", "bilinear"])))
    return nn.Sequential(*layers), (1, 1, 32, 32)


@pytest.mark.parametrize("seed", range(6))
def test_random_nets_agree(seed: int) -> None:
    net, shape = _random_net(random.Random(seed))
    try:
        report = rfscope.analyze(net, shape)
    except Exception:
        pytest.skip("shape collapsed to zero for this random net")
    res = validate(net, report, device="cpu", batch_size=16)
    assert res.ok, f"{net}\n{res.table()}"


def test_wrong_plugin_is_caught() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(2, 2, 3))
    reg = rfscope.Registry()
    reg.ensure_loaded()
    # deliberately wrong: pretend every MaxPool2d is a 2x2 stride-2 pool without padding
    reg.add("wrong-maxpool", [nn.MaxPool2d], override=True,
            rf=lambda ctx: local(ctx, {-2: lambda a: rf.conv(a, 2, 2), -1: lambda a: rf.conv(a, 2, 2)}))
    report = rfscope.analyze(net, (1, 1, 40, 40), registry=reg)
    res = validate(net, report, device="cpu")
    assert not res.ok
    assert res["1"].verdict == "disagree" and res["2"].verdict == "disagree"
    assert res["0"].verdict == "agree"
    # the probe measures the truth: 3x3 conv 'same' then max-pool 3/2/1 -> r=5, j=2, P=2
    assert [m.size for m in res["1"].measured] == [5, 5]
    assert "disagree" in res.table()
    # the right registry agrees
    assert validate(net, rfscope.analyze(net, (1, 1, 40, 40)), device="cpu").ok


class Opaque(nn.Module):
    """A module without a plugin: rfscope reports unknown, the probe measures it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, -1) + x


def test_unknown_is_measured() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 3), Opaque())
    report = rfscope.analyze(net, (1, 1, 24, 24), leaf_modules=["1"])
    assert report.rf("1").status == "unknown"
    res = validate(net, report, nodes=["1"], device="cpu")
    c = res.checks[0]
    assert c.verdict == "measured"
    # hand-derived: roll by 1 along W then add: 3 rows x 4 columns around each unit
    assert [m.size for m in c.measured] == [3, 4]
    assert "measured" in res.table()


# resnet50: published stage RFs (35, 91, 267, 427).  resnet18 by hand: stem 7/2/3 + max-pool 3/2/1 gives
# r=11 at j=4; each stage has four 3x3 convs, the first (from layer2 on) with stride 2, so a stage
# adds 2*j + 3*(2*2j) at the new jump 2j: 11+32=43, 43+8+48=99, 99+16+96=211, 211+32+192=435.
@pytest.mark.parametrize("name,sizes", [
    ("resnet18", {"layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435}),
    ("resnet50", {"layer1": 35, "layer2": 91, "layer3": 267, "layer4": 427}),
])
def test_torchvision_resnet_stages_agree(name: str, sizes: dict[str, int]) -> None:
    tv = pytest.importorskip("torchvision")
    model = getattr(tv.models, name)(weights=None)
    before = copy.deepcopy(model.state_dict())
    # two calls so that layer1-3 run at the smaller input they need (~300 vs ~500 for layer4)
    parts = [validate(model, input_shape=(1, 3, 64, 64), nodes=group, device="cpu", dtype=torch.float32,
                      border=False, batch_size=4) for group in (["layer1", "layer2", "layer3"], ["layer4"])]
    for res in parts:
        assert all(c.verdict == "agree" for c in res.checks), res.table()
    for stage, size in sizes.items():
        res = parts[stage == "layer4"]
        m = res[stage].measured
        assert [x.size for x in m] == [size, size], res.table()
        assert [x.stride for x in m] == [2 ** (int(stage[-1]) + 1)] * 2
        # every conv/pool is centred (p = (k-1)//2), so unit 0 is centred on pixel 0: P = (r-1)/2
        assert [x.padding for x in m] == [(size - 1) // 2] * 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_vgg16_features_agree() -> None:
    tv = pytest.importorskip("torchvision")
    feats = tv.models.vgg16(weights=None).features
    res = validate(feats, input_shape=(1, 3, 64, 64), nodes=["28", "30"], device="cpu",
                   dtype=torch.float32, border=False, batch_size=4)
    assert res.ok and all(c.verdict == "agree" for c in res.checks), res.table()
    # published VGG-16 RFs: features[28] 196/16/90, features[30] (pool5) 212/32/90
    assert [(m.size, m.stride, m.padding) for m in res["28"].measured] == [(196, 16, 90)] * 2
    assert [(m.size, m.stride, m.padding) for m in res["30"].measured] == [(212, 32, 90)] * 2


def test_cli_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "net.py"
    f.write_text(
        "import torch.nn as nn\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))\n"
        "input_shape = (1, 3, 16, 16)\n"
    )
    r = CliRunner().invoke(main, ["probe", str(f), "--mode", "exact", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "agree" in r.output and "disagree" not in r.output
    r = CliRunner().invoke(main, ["probe", str(f), "--node", "nope"])
    assert r.exit_code == 2 and "nope" in r.output
    r = CliRunner().invoke(main, ["probe", str(f), "--mode", "exact", "--format", "json", "--device", "cpu"])
    assert r.exit_code == 0 and '"ok": true' in r.output


class ShapeBranch(nn.Module):
    """Python control flow on a shape: symbolic_trace fails, rfscope falls back to torch.export (ATen ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.b = nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x)))
        if y.shape[-1] > 10:
            y = F.max_pool2d(y, 2)
        return self.b(y) - 1


def test_aten_graph_is_linearised_and_make_fx_refused() -> None:
    report = rfscope.analyze(ShapeBranch(), (1, 1, 32, 32))
    assert report.trace_path != "symbolic_trace"
    res = validate(ShapeBranch(), report, device="cpu")
    assert res.ok and res["b"].verdict == "agree", res.table()
    # hand-derived: 3x3 (r=3) -> max-pool 2/2 (r=4, j=2) -> 3x3/2 (r=4+2*2=8, j=4)
    assert [m.size for m in res["b"].measured] == [8, 8]
    fx_report = rfscope.analyze(ShapeBranch(), (1, 1, 32, 32), trace="make_fx")
    with pytest.raises(rfscope.probe.ProbeError, match="make_fx"):
        validate(ShapeBranch(), fx_report, device="cpu")


class CropConvPad(nn.Module):
    """Shape arithmetic (``x.shape[-1] - 2``) must not be linearised; a crop then a pad."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x[..., 1:x.shape[-1] - 2])
        return F.pad(y, (2, 1))


def test_crop_shape_arithmetic_and_pad() -> None:
    res = validate(CropConvPad(), input_shape=(1, 1, 30), nodes=["conv", "pad"], device="cpu")
    assert res.ok and res["conv"].verdict == "agree", res.table()
    # hand-derived: crop 1 on the left -> P=-1; 3-tap conv -> r=3; pad 2 on the left -> P=1
    c, p = res["conv"].measured[0], res["pad"].measured[0]
    assert (c.size, c.stride, c.padding) == (3, 1, -1)
    assert (p.size, p.stride, p.padding) == (3, 1, 1)
