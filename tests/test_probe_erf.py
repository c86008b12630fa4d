"""ERF: exact binomial stacks, Luo's sqrt(n) law, the area-ratio metric, outputs and conventions."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.probe import area_ratio, area_ratios, erf, gaussian_fit_sigma, gaussian_sigma
from rfscope.probe.inputs import random_chunk


def _ones_stack(n: int, k: int, nd: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if nd == 2 else nn.Conv1d
    layers = [conv(1, 1, k, bias=False) for _ in range(n)]
    for c in layers:
        nn.init.ones_(c.weight)
    return nn.Sequential(*layers)


def _coeffs(n: int, k: int) -> np.ndarray:
    """Coefficients of (1 + z + ... + z^(k-1))^n, by repeated polynomial multiplication."""
    c = np.array([1.0])
    for _ in range(n):
        c = np.convolve(c, np.ones(k))
    return c


@pytest.mark.parametrize("n,k", [(3, 3), (2, 4), (4, 2)])
def test_ones_stack_gives_binomial_outer_product_exactly(n: int, k: int) -> None:
    size = 2 * (n * (k - 1) + 1) + 1
    r = erf(_ones_stack(n, k), input_shape=(1, 1, size, size), samples=2, batch_size=1, device="cpu",
            dtype=torch.float64, progress=False)
    c = _coeffs(n, k)
    if (n, k) == (3, 3):
        assert c.tolist() == [1, 3, 6, 7, 6, 3, 1]
    lo = r.rf["window"][0][0]
    expected = np.zeros((size, size))
    expected[lo:lo + c.size, lo:lo + c.size] = 2 * np.outer(c, c)  # linear: same map for every sample
    assert np.array_equal(r.map, expected)
    # REFERENCE §4: per-axis variance n(k^2-1)/12
    assert r.sigma_moments == pytest.approx((math.sqrt(n * (k * k - 1) / 12),) * 2, rel=1e-12)


def _slope(ns: list[int], sig: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(sig), 1)[0])


NS = [5, 10, 20, 40]


def test_luo_sqrt_law_uniform() -> None:
    fit, mom = [], []
    for n in NS:
        r = erf(_ones_stack(n, 3, nd=1), input_shape=(1, 1, 2 * n + 3), samples=1, device="cpu",
                dtype=torch.float64, progress=False)
        assert r.sigma_moments[0] ** 2 == pytest.approx(n * 8 / 12, rel=1e-12)
        fit.append(r.sigma[0])
        mom.append(r.sigma_moments[0])
    assert abs(_slope(NS, mom) - 0.5) < 1e-9
    assert abs(_slope(NS, fit) - 0.5) <= 0.05
    # the RF grows like n, so ERF/RF shrinks
    assert r.erf_rf_ratio[0] is not None and r.erf_rf_ratio[0] < 0.5


def test_luo_sqrt_law_random_relu() -> None:
    """32 independent random inits of width 32 at once: one grouped conv per layer, groups = inits."""
    torch.manual_seed(0)
    width, inits = 32, 32
    sig = []
    for n in NS:
        layers: list[nn.Module] = []
        for _ in range(n):
            c = nn.Conv1d(width * inits, width * inits, 3, groups=inits, bias=False)
            nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            layers += [c, nn.ReLU()]
        r = erf(nn.Sequential(*layers), input_shape=(1, width * inits, 2 * n + 3), samples=2, batch_size=2,
                device="cpu", progress=False)
        sig.append(r.sigma[0])
    assert abs(_slope(NS, sig) - 0.5) <= 0.05, sig


# ----------------------------------------------------------------------------- metric
def test_area_ratio_delta() -> None:
    m = np.zeros((21, 21))
    m[10, 10] = 5.0
    for v in area_ratios(m, (10, 10)).values():
        assert v == {"side": 3, "ratio": 9 / 441}
    m2 = np.zeros((8, 9))
    m2[2, 3] = 1.0  # off-centre: squares follow the given centre
    assert area_ratios(m2, (2, 3))["99%"] == {"side": 3, "ratio": 9 / 72}


def test_area_ratio_uniform_square() -> None:
    m = np.zeros((21, 21))
    m[8:13, 8:13] = 7.0  # log10(8)/max = 1 on the square: 3x3 holds 9/25 = 0.36, 5x5 holds all
    got = area_ratios(m, (10, 10))
    assert got["20%"] == got["30%"] == {"side": 3, "ratio": 9 / 441}
    assert got["50%"] == got["99%"] == {"side": 5, "ratio": 25 / 441}
    # strictly above: at t = 0.36 the 3x3 square is not enough
    assert area_ratio(m, 0.36, (10, 10)) == (5, 25 / 441)
    assert area_ratio(m, 0.3599, (10, 10)) == (3, 9 / 441)


def test_area_ratio_gaussian() -> None:
    s, n, c = 3.0, 41, 20
    x = np.arange(n) - c
    g = np.exp(-x ** 2 / (2 * s * s))
    m = np.outer(g, g)
    for t in (0.2, 0.3, 0.5, 0.99):
        # separable: the square of half-width r holds (sum_{|x|<=r} g / sum g)^2 of the total
        r = next(r for r in range(1, c + 1) if (g[c - r:c + r + 1].sum() / g.sum()) ** 2 > t)
        assert area_ratio(m, t, (c, c)) == (2 * r + 1, (2 * r + 1) ** 2 / n ** 2)
    assert gaussian_sigma(m) == pytest.approx((s, s), rel=1e-6)
    assert gaussian_fit_sigma(m) == pytest.approx((s, s), rel=1e-9)
    assert area_ratio(np.zeros((5, 5)), 0.5, (2, 2)) is None


# ----------------------------------------------------------------------------- the probe itself
def _small_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


def test_erf_matches_per_image_oracle_and_leaves_model_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = _small_cnn()
    net.train()
    before = copy.deepcopy(net.state_dict())
    r = erf(net, node="4", input_shape=(1, 3, 20, 20), samples=6, batch_size=4, device="cpu",
            dtype=torch.float64, progress=False, seed=3)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    # oracle: the original model (eval copy), one image at a time, same inputs
    ref_net = copy.deepcopy(net).eval().double()
    xs = torch.cat([random_chunk(0, 4, (3, 20, 20), 3), random_chunk(1, 2, (3, 20, 20), 3)]).double()
    ref = torch.zeros(20, 20, dtype=torch.float64)
    for x in xs:
        x = x[None].clone().requires_grad_(True)
        y = ref_net[:5](x)  # node "4" is the second ReLU
        y[0, :, 4, 4].sum().backward()  # output 10x10: centre unit (10-1)//2 = 4
        ref += x.grad[0].clamp_min(0).sum(0)
    assert np.allclose(r.map, ref.numpy(), rtol=1e-10, atol=1e-12)
    # the static RF of unit 4: 3x3/2/1 (r=3, j=2, P=1) then 3x3/1/1 (r=3+2*2=7, P=1+2=3):
    # window [4*2-3, 4*2-3+6] = [5, 11], centre 8
    assert r.rf["size"] == [7, 7] and r.rf["window"] == [[5, 11], [5, 11]]
    assert r.center == (8, 8)

    paths = r.save(tmp_path)
    assert np.array_equal(np.load(tmp_path / "erf.npy"), r.map)
    d = json.loads((tmp_path / "erf.json").read_text())
    for key in ("node", "reduction", "reduction_definition", "input_shape", "weights", "samples", "device",
                "dtype", "area_ratio", "sigma", "erf_rf_ratio", "rf", "square_center"):
        assert key in d, key
    assert d["samples"] == 6 and d["dtype"] == "float64" and d["reduction"] == "clip"
    assert "clipped" in d["reduction_definition"]
    assert set(d["area_ratio"]) == {"20%", "30%", "50%", "99%"}
    png = tmp_path / "erf.png"
    assert png in paths and png.stat().st_size > 1000


def test_erf_reductions_and_errors() -> None:
    net = _small_cnn()
    kw = dict(node="5", input_shape=(1, 3, 16, 16), samples=2, device="cpu", progress=False)
    clip = erf(net, reduction="clip", **kw).map  # type: ignore[arg-type]
    ab = erf(net, reduction="abs", **kw).map  # type: ignore[arg-type]
    assert (ab >= clip - 1e-6).all() and ab.sum() > clip.sum()
    with pytest.raises(rfscope.probe.ProbeError):
        erf(net, reduction="mean", **kw)  # type: ignore[arg-type]
    with pytest.raises(rfscope.UnknownNameError):
        erf(net, node="nope", input_shape=(1, 3, 16, 16), samples=1, device="cpu", progress=False)


def test_bfloat16_checked_against_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _small_cnn()
    r = erf(net, node="5", input_shape=(1, 3, 24, 24), samples=4, batch_size=4, device="cpu",
            dtype=torch.bfloat16, progress=False)
    assert r.bfloat16_check is not None and r.bfloat16_check["agree"] is True
    assert r.conventions["dtype"] == "bfloat16"

    import rfscope.probe.effective as E

    real = E._accumulate

    def skewed(*a, **k):  # type: ignore[no-untyped-def]
        acc = real(*a, **k)
        if a[7] == torch.bfloat16:  # pretend bfloat16 smeared the map
            acc = acc + acc.max()
        return acc

    monkeypatch.setattr(E, "_accumulate", skewed)
    with pytest.raises(rfscope.probe.ProbeError, match="float32"):
        erf(net, node="5", input_shape=(1, 3, 24, 24), samples=4, batch_size=4, device="cpu",
            dtype=torch.bfloat16, progress=False)


def test_cli_erf(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "net.py"
    f.write_text(
        "import torch.nn as nn\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))\n"
        "input_shape = (1, 3, 16, 16)\n"
    )
    run = CliRunner().invoke
    out = tmp_path / "o1"
    r = run(main, ["probe", str(f), "--mode", "erf", "--node", "2", "--samples", "3", "--device", "cpu",
                   "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "area ratio" in r.output and (out / "erf.npy").exists() and (out / "erf.png").exists()
    torch.save(torch.randn(2, 3, 16, 16), tmp_path / "x.pt")
    r = run(main, ["probe", str(f), "--mode", "erf", "--inputs", str(tmp_path / "x.pt"), "--device", "cpu",
                   "--out", str(tmp_path / "o2"), "--format", "json", "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "o2" / "erf.json").read_text())
    assert d["samples"] == 2 and "x.pt" in d["inputs"]
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 40, 3), 60 * i, dtype=np.uint8)).save(imgs / f"{i}.png")
    r = run(main, ["probe", str(f), "--mode", "erf", "--image-dir", str(imgs), "--device", "cpu",
                   "--out", str(tmp_path / "o3"), "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "o3" / "erf.json").read_text())
    assert d["samples"] == 2 and "images" in d["inputs"]
    bad = run(main, ["probe", str(f), "--mode", "erf", "--inputs", "x.pt", "--image-dir", str(imgs),
                     "--out", str(tmp_path / "o4")])
    assert bad.exit_code == 2 and "not both" in bad.output
    bad = run(main, ["probe", str(f), "--mode", "erf"])
    assert bad.exit_code == 2 and "--out" in bad.output
    if not torch.cuda.is_available():
        bad = run(main, ["probe", str(f), "--mode", "erf", "--device", "cuda", "--out", str(tmp_path / "o5")])
        assert bad.exit_code == 2 and "CUDA" in bad.output


def test_png_skipped_without_matplotlib(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import sys

    r = erf(_small_cnn(), node="2", input_shape=(1, 3, 12, 12), samples=1, device="cpu", progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    paths = r.save(tmp_path)
    assert {p.name for p in paths} == {"erf.npy", "erf.json"}
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_cli_erf_uses_weights_checkpoint(tmp_path) -> None:
    """--weights loads trained weights: a dirac 3x3 kernel makes the ERF a single pixel."""
    src = tmp_path / "net.py"
    src.write_text(
        "import torch.nn as nn\n"
        "input_shape = (1, 1, 9, 9)\n"
        "model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))\n"
    )
    ckpt = tmp_path / "dirac.pt"
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0
    torch.save({"0.weight": w, "0.bias": torch.zeros(1)}, ckpt)
    maps = {}
    for name, extra in (("random", []), ("dirac", ["--weights", str(ckpt)])):
        out = tmp_path / name
        res = CliRunner().invoke(main, ["probe", str(src), "--mode", "erf", "--node", "0", "--samples", "2",
                                        "--out", str(out), "--quiet", "--device", "cpu", "--reduction", "abs", *extra])
        assert res.exit_code == 0, res.output
        maps[name] = np.load(out / "erf.npy")
    assert np.count_nonzero(maps["dirac"]) == 1 and maps["dirac"][4, 4] > 0
    assert np.count_nonzero(maps["random"]) > 1
    res = CliRunner().invoke(main, ["probe", str(src), "--mode", "erf", "--node", "0", "--out", str(tmp_path / "x"),
                                    "--weights", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "missing.pt" in res.output
