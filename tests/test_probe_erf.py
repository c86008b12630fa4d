"""ERF: exact binomial stacks, Luo's sqrt(n) law, the area-ratio metric, outputs and conventions."""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.probe import NonFiniteError, area_ratio, area_ratios, erf, erf_extent, gaussian_sigma, support
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
    # per-axis variance n(k^2-1)/12; the support is the RF, n(k-1)+1
    assert r.sigma == pytest.approx((math.sqrt(n * (k * k - 1) / 12),) * 2, rel=1e-12)
    assert r.support == (c.size, c.size) == tuple(r.rf["size"])


def _slope(ns: list[int], sig: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(sig), 1)[0])


NS = [5, 10, 20, 40]


def test_luo_sqrt_law_uniform() -> None:
    mom = []
    for n in NS:
        r = erf(_ones_stack(n, 3, nd=1), input_shape=(1, 1, 2 * n + 3), samples=1, device="cpu",
                dtype=torch.float64, progress=False)
        assert r.sigma[0] ** 2 == pytest.approx(n * 8 / 12, rel=1e-12)
        mom.append(r.sigma[0])
    assert abs(_slope(NS, mom) - 0.5) < 1e-9
    # the RF grows like n, so ERF/RF shrinks: n = 40, 4 sqrt(40 * 8 / 12) / 81 = 0.2551
    assert r.erf_rf_ratio[0] == pytest.approx(4 * math.sqrt(40 * 8 / 12) / 81, rel=1e-12)


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
    assert support(m) == (n, n) and erf_extent(m) == pytest.approx((4 * s, 4 * s), rel=1e-6)
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
        accs = real(*a, **k)  # one map per probed node
        if a[7] == torch.bfloat16:  # pretend bfloat16 smeared the map
            accs = [acc + acc.max() for acc in accs]
        return accs

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
    (tmp_path / "erf.png").write_bytes(b"a PNG of another run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    paths = r.save(tmp_path)
    assert {p.name for p in paths} == {"erf.npy", "erf.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erf.json", "erf.npy"]  # the stale PNG is gone
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


# ----------------------------------------------------------------------------- one estimator: sigma, extent, ERF/RF
def _embed(c: np.ndarray, size: int = 21, at: int = 4) -> np.ndarray:
    m = np.zeros((size, size))
    m[at:at + c.size, at:at + c.size] = np.outer(c, c)
    return m


@pytest.mark.parametrize("n,k,sigma,extent", [
    # binomial maps: variance n(k^2-1)/12; extent min(4 sigma, n(k-1)+1)
    (3, 3, math.sqrt(2.0), 4 * math.sqrt(2.0)),  # 5.657 < 7
    (2, 3, math.sqrt(16 / 12), 4 * math.sqrt(16 / 12)),  # 4.619 < 5
    (1, 5, math.sqrt(2.0), 5.0),  # uniform 5 wide: 4 sigma = 5.657 is clipped to the support
    (1, 3, math.sqrt(8 / 12), 3.0),  # uniform 3 wide: 3.266 clipped
])
def test_estimator_on_binomial_maps(n: int, k: int, sigma: float, extent: float) -> None:
    m = _embed(_coeffs(n, k))
    assert gaussian_sigma(m) == pytest.approx((sigma, sigma), rel=1e-12)
    assert support(m) == (n * (k - 1) + 1,) * 2
    assert erf_extent(m) == pytest.approx((extent, extent), rel=1e-12)


def test_estimator_on_a_gaussian_and_two_spikes() -> None:
    x = np.arange(61) - 30.0
    g = np.exp(-x ** 2 / (2 * 2.5 ** 2))
    m = np.outer(g, np.ones(5))  # axis 0 Gaussian sigma 2.5, axis 1 uniform over 5
    s = gaussian_sigma(m)
    assert s[0] == pytest.approx(2.5, rel=1e-9) and s[1] == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert erf_extent(m) == pytest.approx((10.0, 5.0), rel=1e-9)
    spikes = np.zeros((1, 9))
    spikes[0, [2, 6]] = 1.0  # sigma 2, 4 sigma = 8 > the 5 pixels from spike to spike
    assert gaussian_sigma(spikes)[1] == 2.0 and support(spikes) == (1, 5) and erf_extent(spikes)[1] == 5.0
    z = np.zeros((4, 4))
    assert support(z) == (0, 0) and all(math.isnan(v) for v in erf_extent(z))


@pytest.mark.parametrize("n,k,ratio", [(1, 3, 1.0), (1, 5, 1.0), (2, 3, 4 * math.sqrt(16 / 12) / 5),
                                       (3, 3, 4 * math.sqrt(2.0) / 7)])
def test_shallow_ones_stack_erf_never_exceeds_its_rf(n: int, k: int, ratio: float) -> None:
    """The map's support is exactly the RF: ERF/RF is min(4 sigma, RF) / RF (was 5.5e7 for n=1, k=3)."""
    r = erf(_ones_stack(n, k), input_shape=(1, 1, 15, 15), samples=1, device="cpu", dtype=torch.float64,
            progress=False)
    rf = n * (k - 1) + 1
    assert r.rf["size"] == [rf, rf] and r.support == (rf, rf)
    assert r.erf_rf_ratio == pytest.approx((ratio, ratio), rel=1e-12)
    d = r.to_dict()
    assert d["erf_rf_ratio"] == pytest.approx([ratio, ratio], rel=1e-12) and "sigma_moments" not in d
    assert "clipped to the support" in d["erf_extent_definition"]


@pytest.mark.parametrize("seed", range(4))
def test_shallow_random_relu_net_ratio_at_most_one(seed: int) -> None:
    """Conv-ReLU-conv, random weights: the gradient stays inside the 5x5 RF, so ERF/RF <= 1
    (the earlier Gaussian fit gave 1.4-7.5 on these nets)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    r = erf(net, input_shape=(1, 3, 15, 15), samples=16, device="cpu", progress=False)
    assert r.rf["size"] == [5, 5]
    assert all(0 < s <= 5 for s in r.support)
    assert all(x is not None and 0 < x <= 1.0 for x in r.erf_rf_ratio), r.erf_rf_ratio
    for a in range(2):
        assert r.erf_extent[a] == pytest.approx(min(4 * r.sigma[a], r.support[a]), rel=1e-12)


# ----------------------------------------------------------------------------- non-finite values are errors
class _NaNWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.c = nn.Conv2d(2, 1, 3, padding=1)
        with torch.no_grad():
            self.b.weight[0, 0, 0, 0] = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class _BadBackward(nn.Module):
    """Finite forward (sqrt(0) = 0), infinite backward (d sqrt/dx at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.sqrt(y - y) + y


def test_nan_map_is_an_error_naming_the_first_node() -> None:
    kw = dict(input_shape=(1, 1, 12, 12), samples=2, device="cpu", progress=False)
    with pytest.raises(NonFiniteError) as ei:
        erf(_NaNWeight(), **kw)  # type: ignore[arg-type]
    assert ei.value.node == "b" and ei.value.phase == "forward"
    assert "node 'b' (call_module b)" in str(ei.value) and "NaN" in str(ei.value)
    assert isinstance(ei.value, rfscope.probe.ProbeError) and isinstance(ei.value, ValueError)
    with pytest.raises(NonFiniteError) as ei:
        erf(_BadBackward(), **kw)  # type: ignore[arg-type]
    assert ei.value.phase == "backward" and ei.value.node == "sqrt", str(ei.value)
    assert "backward pass of node 'sqrt'" in str(ei.value)
    x = torch.randn(3, 1, 12, 12)
    x[1, 0, 5, 5] = float("inf")
    with pytest.raises(NonFiniteError, match="input batch") as ei:
        erf(_ones_stack(1, 3), inputs=x, device="cpu", progress=False)
    assert ei.value.phase == "inputs"
    for bad in (5, 9):  # a middle batch and the last one (batches of 4: checked one batch late)
        x = torch.randn(10, 1, 12, 12)
        x[bad, 0, 0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match="input batch"):
            erf(_ones_stack(5, 3), inputs=x, batch_size=4, device="cpu", progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        area_ratios(np.full((5, 5), np.nan), (2, 2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gaussian_sigma(np.array([[1.0, np.inf]]))


def test_cli_nan_map_exits_2_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "net.py"
    src.write_text(
        "import torch, torch.nn as nn\n"
        "input_shape = (1, 1, 12, 12)\n"
        "model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))\n"
        "with torch.no_grad():\n    model[2].weight.fill_(float('nan'))\n"
    )
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["probe", str(src), "--mode", "erf", "--samples", "2", "--device", "cpu",
                                    "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "node '_2'" in res.output
    assert "area ratio" not in res.output and not out.exists()


# ----------------------------------------------------------------------------- outputs: all or nothing
def _run_files(d) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_save_on_a_full_disk_leaves_the_previous_run(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from test_atomic import full_disk_after

    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\ninput_shape = (1, 1, 12, 12)\n"
                   "model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))\n")
    out = tmp_path / "out"
    args = ["probe", str(src), "--mode", "erf", "--device", "cpu", "--out", str(out), "--quiet"]
    assert CliRunner().invoke(main, [*args, "--seed", "1"]).exit_code == 0
    before = _run_files(out)
    assert set(before) == {"erf.npy", "erf.json", "erf.png"}
    # erf.npy fits, the disk fills while erf.json is written
    full_disk_after(monkeypatch, out, len(before["erf.npy"]) + 10)
    res = CliRunner().invoke(main, [*args, "--seed", "2"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "erf.json" in res.output and "disk is full" in res.output
    assert _run_files(out) == before  # nothing half-written, no temp files, no mix of runs
    monkeypatch.undo()
    assert CliRunner().invoke(main, [*args, "--seed", "2"]).exit_code == 0
    after = _run_files(out)
    assert set(after) == set(before) and all(after[k] != before[k] for k in ("erf.npy", "erf.json"))


def test_save_writes_through_symlinks_and_keeps_modes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = erf(_ones_stack(1, 3), input_shape=(1, 1, 9, 9), samples=1, device="cpu", progress=False)
    out, store = tmp_path / "out", tmp_path / "store"
    out.mkdir()
    store.mkdir()
    (store / "erf.json").write_text("old")
    (out / "erf.json").symlink_to(store / "erf.json")
    (out / "erf.npy").write_bytes(b"old")
    (out / "erf.npy").chmod(0o600)
    paths = r.save(out, png=False)
    assert paths == [out / "erf.npy", out / "erf.json"]
    assert (out / "erf.json").is_symlink() and json.loads((store / "erf.json").read_text())["samples"] == 1
    assert (out / "erf.npy").stat().st_mode & 0o777 == 0o600
    assert np.array_equal(np.load(out / "erf.npy"), r.map)
    assert sorted(p.name for p in out.iterdir()) == ["erf.json", "erf.npy"]


def test_out_is_checked_before_any_work(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rfscope.loader

    loaded: list[str] = []
    monkeypatch.setattr(rfscope.loader, "load_model", lambda t: loaded.append(t))
    f = tmp_path / "afile"
    f.write_text("x")
    blocked = tmp_path / "blocked"
    (blocked / "erf.npy").mkdir(parents=True)
    for out, why in ((f, "not a directory"), (f / "sub", "not a directory"), (blocked, "is a directory")):
        res = CliRunner().invoke(main, ["probe", "m.py", "--mode", "erf", "--out", str(out)])
        assert res.exit_code == 2 and why in res.output, res.output
    assert loaded == []


# ----------------------------------------------------------------------------- samples stream
def test_samples_stream_with_memory_bounded_by_the_batch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import time
    import tracemalloc

    import rfscope.probe.effective as E

    tracemalloc.start()
    try:
        it = E._batches(E._chunks(10**6, 1), None, (1, 1, 4, 4), 0, torch.device("cpu"))
        n, x = next(it)
        it.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (n, tuple(x.shape)) == (1, (1, 1, 4, 4))
    assert peak < 1_000_000, peak  # a list of a million chunks alone is ~100 MB
    big = E._chunks(10**12, 8)
    assert len(big) == 125_000_000_000 and big.total() == 10**12
    odd = E._chunks(10**12 + 3, 8)  # shares of 3 ranks cover every sample once; only the last chunk is short
    assert sum(odd[r::3].total() for r in range(3)) == 10**12 + 3 and list(odd[-1:]) == [(odd.ks[-1], 10**12, 3)]

    class Stop(Exception):
        pass

    def stop(self, k):  # type: ignore[no-untyped-def]
        raise Stop(k)

    net = _ones_stack(1, 3)
    rep = rfscope.analyze(net, (1, 1, 16, 16))
    monkeypatch.setattr(E.Progress, "update", stop)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(Stop) as ei:
            erf(net, samples=10**12, batch_size=4, device="cpu", progress=False, report=rep)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.args == (4,) and time.perf_counter() - t0 < 60
    assert peak < 20_000_000, peak


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or sys.platform != "linux",
                    reason="mounting a tiny tmpfs needs root on Linux")
def test_really_full_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs filled to 36 KiB free: the second run's erf.npy (32 KiB) fits, erf.json does not."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = tmp_path / "net.py"
        src.write_text("import torch.nn as nn\ninput_shape = (1, 1, 64, 64)\n"
                       "model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))\n")
        out = mnt / "o"
        args = ["probe", str(src), "--mode", "erf", "--device", "cpu", "--samples", "1", "--out", str(out),
                "--quiet"]
        assert CliRunner().invoke(main, [*args, "--seed", "1"]).exit_code == 0
        before = _run_files(out)
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 36 * 1024))
        res = CliRunner().invoke(main, [*args, "--seed", "2"])
        assert res.exit_code == 2 and "disk is full" in res.output and "erf." in res.output, res.output
        assert _run_files(out) == before
        assert np.load(out / "erf.npy").shape == (64, 64)
        res = CliRunner().invoke(main, [*args, "--out", str(mnt / "new" / "dir")])
        assert res.exit_code == 2 and "disk is full" in res.output
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "o"]  # no empty folders left
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_image_folder_is_read_batch_by_batch(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    import rfscope.probe.effective as E
    import rfscope.probe.inputs as I

    for i in range(40):
        Image.fromarray(np.full((10, 12, 3), 5 * i, dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    folder = I.ImageFolder(tmp_path, (3, 8, 8))
    assert len(folder) == 40 and folder.shape == (40, 3, 8, 8)
    whole = I.load_images(tmp_path, (3, 8, 8))
    assert torch.equal(folder[4:8], whole[4:8]) and whole.shape == (40, 3, 8, 8)
    read: list[str] = []
    real = I._read_image
    def counting(p):  # type: ignore[no-untyped-def]
        read.append(p.name)
        return real(p)

    monkeypatch.setattr(I, "_read_image", counting)

    class Stop(Exception):
        pass

    def stop(self, k):  # type: ignore[no-untyped-def]
        raise Stop(k)

    real_update = E.Progress.update
    monkeypatch.setattr(E.Progress, "update", stop)
    with pytest.raises(Stop):
        erf(nn.Sequential(nn.Conv2d(3, 2, 3)), inputs=folder, samples=10**12, batch_size=2, device="cpu",
            progress=False)
    # the first batch, plus at most four batches read ahead: never the whole folder
    # (worker threads read the batches ahead, so images of different batches may interleave)
    assert 2 <= len(read) <= 10 and {"00.png", "01.png"} <= set(read), read
    read.clear()
    monkeypatch.setattr(E.Progress, "update", real_update)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    r = erf(net, inputs=folder.subset(6), batch_size=4, device="cpu", progress=False, dtype=torch.float64)
    ref = erf(net, inputs=whole[:6], batch_size=4, device="cpu", progress=False, dtype=torch.float64)
    assert r.conventions["samples"] == 6 and len(read) == 6  # each image read once
    assert r.map.any() and np.array_equal(r.map, ref.map)
