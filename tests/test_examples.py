"""Every example in examples/ runs through the CLI and gives the hand-derived numbers.

Hand derivations use r' = r + d(k-1)j, j' = js, P' = P + pj (docs/design.md §1); the
phase-dependent windows of transposed convs and the U-Net are checked against a
gradient oracle (all-ones weights, identities for BN/ReLU/Tanh, max -> avg pool,
float64) written here, not rfscope's probe.
"""

from __future__ import annotations

import json
import math
import runpy
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from oracle import Oracle

import rfscope
from rfscope.cli import main

EX = Path(__file__).resolve().parent.parent / "examples"


def cli(target: str, *extra: str, code: int = 0) -> str:
    r = CliRunner().invoke(main, ["analyze", str(EX / target), *extra])
    assert r.exit_code == code, r.output
    return r.output


def cli_json(target: str) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(cli(target, "--format", "json"))
    return d


def mod_rf(d: dict[str, Any], module: str) -> dict[str, Any]:
    rf: dict[str, Any] = d["modules"][module]["rf"]
    return rf


def load(target: str) -> nn.Module:
    from rfscope.loader import load_model

    return load_model(str(EX / target)).model


# ---------------------------------------------------------------- gradient oracle
def oracle_cols(model: nn.Module, shape: tuple[int, ...], module: str, units: list[int]) -> list[list[int]]:
    """Input columns that reach unit (row = centre, col = u) of ``module``'s output, per unit."""
    orc = Oracle(model, shape, module, batch=len(units))  # one sample per unit: one backward pass
    row = orc.out_size[0] // 2
    return [cols for _rows, cols in orc.supports([(row, u) for u in units])]


def static_cols(model: nn.Module, shape: tuple[int, ...], module: str, units: list[int]) -> list[list[int]]:
    rf = rfscope.analyze(model, input_shape=shape).rf(module)
    return [rf.pixels((0, u))[1] for u in units]


# ---------------------------------------------------------------- dilated convolution
def test_dilated_context_gridded() -> None:
    d = cli_json("dilated_context.py")
    # stem: 3x3 s2 p1 -> r=3, j=2, P=1; three 3x3 d=2 p=2 convs at j=2 add 2*2*2 = 8 each
    rf = mod_rf(d, "context.2.0")
    assert rf["size"] == [27, 27] and rf["stride"] == [2, 2] and rf["padding"] == [1 + 3 * 4] * 2
    # seen: {0,1,2} + {0,4,...,24}: 7 groups of 3 -> 21 of 27; holes every 4th pixel from 3
    assert rf["coverage"] == [pytest.approx(21 / 27)] * 2
    (w,) = d["warnings"]
    assert w["id"] == "gridding" and w["layer"] == "context.2.0"
    assert w["evidence"]["holes"] == [[3, 7, 11, 15, 19, 23]] * 2
    assert w["evidence"]["chain"] == ["context.0.0", "context.1.0", "context.2.0"]


def test_dilated_context_fixed() -> None:
    d = cli_json("dilated_context.py:fixed")
    rf = mod_rf(d, "head")
    assert rf["size"] == [3 + 2 * 2 * (1 + 2 + 5)] * 2 and rf["coverage"] == [1, 1]
    assert d["warnings"] == []


def test_dilated_bare_stacks() -> None:
    """The textbook cases of the issue: k=3 rates 2,2,2 -> 13 with 7/13 seen; 1,2,5 -> 17 dense."""
    for rates, size, cov in (((2, 2, 2), 13, Fraction(7, 13)), ((1, 2, 5), 17, Fraction(1))):
        net = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=r, dilation=r) for r in rates])
        rep = rfscope.analyze(net, input_shape=(1, 2, 32, 32))
        assert rep.rf("2").size == (size, size) and rep.rf("2").coverage == (cov, cov)
        assert len(rep.warnings) == (cov < 1)


# ---------------------------------------------------------------- transposed convolution
def test_unet() -> None:
    d = cli_json("unet.py")
    # enc1 5, pool 6 (j=2), enc2 14, pool 16 (j=4), bottleneck 16+8+8 = 32
    assert mod_rf(d, "bottleneck")["size"] == [32, 32] and mod_rf(d, "bottleneck")["stride"] == [4, 4]
    up2 = mod_rf(d, "up2")  # k=2, s=2: no growth, stride halves
    assert up2["size"] == [32, 32] and up2["stride"] == [2, 2]
    assert mod_rf(d, "up1")["stride"] == [1, 1]
    assert d["warnings"] == []
    model, shape = load("unet.py"), (1, 1, 96, 96)
    units = list(range(48, 52))  # one period of the phase pattern (two x2 upsamplings)
    for module in ("up1", "head"):
        assert static_cols(model, shape, module, units) == oracle_cols(model, shape, module, units), module


def test_dcgan_even_overlap() -> None:
    d = cli_json("dcgan_generator.py")
    assert d["warnings"] == []
    nodes = {n["name"]: n["rf"] for n in d["nodes"]}
    # first k=4,s=2,p=1 layer: every output sees 2 input units -> r=2, j=1/2, P=1
    assert nodes["_0"]["size"] == [2, 2] and nodes["_0"]["stride"] == [0.5, 0.5] and nodes["_0"]["padding"] == [1, 1]
    # second: outputs 4m..4m+3 read units {2m-1,2m}, {2m,2m+1}, {2m,2m+1}, {2m+1,2m+2}: sizes 2,3,3,2
    assert nodes["_3"]["phase_sizes"] == [[2, 3, 3, 2]] * 2 and nodes["_3"]["stride"] == [0.25, 0.25]
    assert nodes["_6"]["stride"] == [0.125, 0.125]
    model, shape = load("dcgan_generator.py"), (1, 64, 4, 4)
    units = list(range(8, 24))
    assert static_cols(model, shape, "6", units) == oracle_cols(model, shape, "6", units)


def test_dcgan_uneven_and_resize() -> None:
    d = cli_json("dcgan_generator.py:uneven")
    assert [w["id"] for w in d["warnings"]] == ["checkerboard"] * 3
    # k=3, s=2, p=1: output 2m gets tap 1 only, 2m+1 gets taps 0 and 2
    assert all(w["evidence"]["taps_per_phase"] == [[1, 2], [1, 2]] for w in d["warnings"])
    assert d["warnings"][0]["evidence"]["phase_sizes"] == [[1, 2], [1, 2]]
    model, shape = load("dcgan_generator.py:uneven"), (1, 64, 4, 4)
    units = list(range(8, 24))
    assert static_cols(model, shape, "6", units) == oracle_cols(model, shape, "6", units)
    d = cli_json("dcgan_generator.py:resize_conv")
    assert d["warnings"] == []


# ---------------------------------------------------------------- depthwise-separable
C_OUT = [16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]  # MobileNet v1 x 1/4


def test_mobilenet_separable_savings() -> None:
    d = cli_json("mobilenet_v1.py")
    last = [n for n in d["nodes"] if n["name"] == "_78"][0]["rf"]
    # published mobilenet_v1: 315 / 32; P = sum of p*j over the 14 3x3 convs = 157 (PyTorch pads both sides)
    assert last["size"] == [315, 315] and last["stride"] == [32, 32] and last["padding"] == [157, 157]
    blocks = d["separable_blocks"]
    assert len(blocks) == 13
    c_in = 8
    for b, c_out in zip(blocks, C_OUT, strict=True):
        assert (b["c_in"], b["c_out"]) == (c_in, c_out)
        assert b["params"] == 9 * c_in + c_in * c_out and b["standard_params"] == 9 * c_in * c_out
        assert b["params_ratio"] == pytest.approx(1 / c_out + 1 / 9)
        assert b["macs_ratio"] == pytest.approx(1 / c_out + 1 / 9)
        c_in = c_out
    std = cli_json("mobilenet_v1.py:standard")
    assert std["separable_blocks"] == []
    assert [n for n in std["nodes"] if n["name"] == "_39"][0]["rf"]["size"] == [315, 315]
    conv_w = sum(b["params"] for b in blocks)
    std_w = sum(b["standard_params"] for b in blocks)
    # the two nets differ only in those conv weights and in the BN layers after the depthwise convs
    bn_dw = sum(2 * c for c in [8, *C_OUT[:-1]])
    assert std["summary"]["params_total"] - d["summary"]["params_total"] == std_w - conv_w - bn_dw


# ---------------------------------------------------------------- pooling
@pytest.mark.parametrize(("attr", "extra_params"), [("", 0), (":avg", 0), (":strided", 2 * (16 * 16 * 4 + 16))])
def test_pooling(attr: str, extra_params: int) -> None:
    d = cli_json(f"pooling.py{attr}")
    nodes = {n["name"]: n["rf"] for n in d["nodes"]}
    # conv3 -> 3; 2x2/2 -> 4 (j=2); conv3 -> 8; 2x2/2 -> 10 (j=4); conv3 -> 18, P = 1 + 2 + 4 = 7
    assert [nodes[f"_{i}"]["size"][0] for i in (0, 2, 3, 5, 6)] == [3, 4, 8, 10, 18]
    assert nodes["_6"]["stride"] == [4, 4] and nodes["_6"]["padding"] == [7, 7]
    assert nodes["_8"]["status"] == "global" and nodes["_10"]["status"] == "global"
    convs = 3 * 16 * 9 + 16 + 2 * (16 * 16 * 9 + 16)
    assert d["summary"]["params_total"] == convs + 16 * 10 + 10 + extra_params


# ---------------------------------------------------------------- capsules
def test_capsnet() -> None:
    d = cli_json("capsnet.py")
    prim = mod_rf(d, "primary")  # 9x9 conv, then 9x9 stride-2 conv: 9 + 8 = 17, j=2
    assert prim["status"] == "exact" and prim["size"] == [17, 17] and prim["stride"] == [2, 2]
    digits = mod_rf(d, "digits")
    # every capsule routed from all 6x6 primary positions: unit 5 sees 10 + 17 - 1 = 26 at most,
    # so pixels 0..26 of 28 (hand-derived), the same window for every digit capsule: not 'global'
    assert digits["status"] == "exact" and digits["size"] == [27, 27]
    scores = [n for n in d["nodes"] if n["name"] == d["output"]][0]["rf"]  # capsule lengths
    assert scores["status"] == "exact" and scores["size"] == [27, 27]
    w = 288 * 10 * 16 * 8  # 6x6 positions x 8 types = 288 input capsules
    node = [n for n in d["nodes"] if n["name"] == "digits"][0]
    assert node["params"] == w
    total = (81 * 32 + 32) + (81 * 32 * 64 + 64) + w
    assert d["summary"]["params_total"] == total == 537_216
    assert d["unsupported"] == [] and d["errors"] == []


def test_capsule_routing_matches_reference_math() -> None:
    """DigitCaps computes dynamic routing (Sabour et al. Procedure 1), written here with loops."""
    from rfscope.models.capsule import DigitCaps, squash

    torch.manual_seed(0)
    caps = DigitCaps(in_caps=5, in_dim=3, out_caps=2, out_dim=4, iterations=3)
    u = torch.randn(1, 5, 3)
    uh = [[caps.W[i, j] @ u[0, i] for j in range(2)] for i in range(5)]
    b = torch.zeros(5, 2)
    for r in range(3):
        c = torch.softmax(b, dim=1)
        v = [squash(sum(c[i, j] * uh[i][j] for i in range(5)), dim=0) for j in range(2)]  # type: ignore[arg-type]
        if r < 2:
            b = b + torch.tensor([[float((uh[i][j] @ v[j]).detach()) for j in range(2)] for i in range(5)])
    assert torch.allclose(caps(u)[0], torch.stack(v), atol=1e-6)
    assert math.isclose(float(squash(torch.tensor([3.0, 4.0]), dim=0).norm()), 25 / 26, rel_tol=1e-6)


# ---------------------------------------------------------------- initialisation
@pytest.mark.parametrize(("attr", "code", "expect"), [
    ("", 1, "symmetric-units"),
    (":zero_cnn", 1, "dead-units"),
    (":constant_cnn", 1, "symmetric-units"),
    (":deep_plain_bad", 0, "signal-vanishing"),
    (":deep_plain_good", 0, "init check: no findings"),
    (":mlp_good", 0, "init check: no findings"),
    (":cnn_good", 0, "init check: no findings"),
])
def test_init_examples(attr: str, code: int, expect: str) -> None:
    out = cli(f"init_examples.py{attr}", "--check-init", code=code)
    assert expect in out


# ---------------------------------------------------------------- every example loads and is clean
def test_every_example_is_covered() -> None:
    names = {p.name for p in EX.glob("*.py")}
    tested = {"dilated_context.py", "unet.py", "dcgan_generator.py", "mobilenet_v1.py", "pooling.py",
              "capsnet.py", "init_examples.py", "rf_vs_erf.py", "quickstart.py",
              "plugin_deformable.py"}  # tests/test_plugin_example.py
    assert names <= tested, names - tested


def test_design_main_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EX / "dilated_context.py"), run_name="__main__")
    assert "dense schedule" in capsys.readouterr().out


# ---------------------------------------------------------------- RF vs ERF
def test_rf_vs_erf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = runpy.run_path(str(EX / "rf_vs_erf.py"), run_name="rf_vs_erf")
    rows = ns["main"](["--out", str(tmp_path), "--samples", "2", "--no-png"])  # PNGs: 1 s each
    # stage1: 3+2 = 5; stage2: s2 conv +2 -> 7 (j=2), +4 -> 11; stage3: +4 -> 15 (j=4), +8 -> 23;
    # stage4: +8 -> 31 (j=8), +16 -> 47; the ResNet's 3x3 body dominates its 1x1 skips: the same
    expected = {"stage1": (5, 1), "stage2": (11, 2), "stage3": (23, 4), "stage4": (47, 8)}
    assert len(rows) == 8
    for r in rows:
        assert (r["rf"], r["stride"]) == expected[r["stage"]]
        # the gradient never leaves the theoretical RF: the 99% square fits inside it
        assert r["area_99"] <= r["rf"] ** 2 / 64**2 + 1e-12
        assert (tmp_path / f"{r['net']}_{r['stage']}" / "erf.npy").exists()
    plain = [r["erf_rf"] for r in rows if r["net"] == "plain"]
    assert plain[-1] < plain[0]  # the ERF covers a shrinking fraction of the RF with depth (Luo et al.)
    assert "area t=99%" in capsys.readouterr().out
    out = cli("rf_vs_erf.py:resnet")
    assert "stage4" in out
