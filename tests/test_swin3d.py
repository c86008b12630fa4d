"""Video Swin (torchvision ``swin3d``): 3-D shifted-window attention vs a gradient oracle.

Same method as tests/test_swin.py: the oracle runs torchvision's own
``shifted_window_attention_3d`` (pad, roll, partition, mask, reverse) on a float64
copy with positive constant weights, so the index maps are PyTorch's, not rfscope's.
"""

from __future__ import annotations

import itertools

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
video_swin = pytest.importorskip("torchvision.models.video.swin_transformer")

from oracle import _Mode, prepare  # noqa: E402

import rfscope  # noqa: E402

LEAK = 1e-30  # the mask is additive -100, not -inf (see tests/test_swin.py)
QK = 1e-6
SHAPE = (1, 3, 12, 40, 40)  # tokens 6 x 10 x 10 (window 4: padded 8 x 12 x 12), then 6 x 5 x 5


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return video_swin.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                        window_size=[4, 4, 4], stochastic_depth_prob=0.0, num_classes=3)


# features.0.1: shift 2 on every axis (6 -> 8, 10 -> 12 padded); features.1: patch merging over H, W
# (T untouched); features.2.1: shift 2 on 6 x 5 x 5 tokens (padded 8 x 8 x 8: the roll wraps real tokens)
MODULES = {"features.0.0": (6, 10), "features.0.1": (6, 10), "features.1": (6, 5), "features.2.1": (6, 5)}


def _units(t: int, n: int) -> list[tuple[int, int, int]]:
    ts = sorted({0, 1, t // 2, t - 1})
    ns = sorted({0, 1, n // 2, n - 2, n - 1})
    return [u for u in itertools.product(ts, ns, ns) if u[1] == u[2] or {u[1], u[2]} & {0, n - 1}]


def _oracle_supports(name: str, units: list[tuple[int, int, int]]) -> list[list[list[int]]]:
    model = prepare(_tiny())
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.zero_()
            elif pname.endswith("qkv.weight"):
                p[: 2 * p.shape[1]] *= QK
    x = torch.ones((len(units), *SHAPE[1:]), dtype=torch.float64, requires_grad=True)
    outs: list[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_hook(lambda _m, _i, o: outs.append(o))
    with _Mode(local=False):
        model.features(model.patch_embed(x))
    h.remove()
    y = outs[0]  # (B, T, H, W, C)
    go = torch.zeros_like(y)
    for b, u in enumerate(units):
        go[(b, *u)] = 1.0
    (g,) = torch.autograd.grad(y, x, go)
    res = []
    for b in range(len(units)):
        mag = g[b].abs().sum(0)  # (T, H, W)
        nz = mag > LEAK * mag.max()
        assert (mag[(mag != 0) & ~nz] < 1e-40 * mag.max()).all()
        res.append([[int(v) for v in torch.nonzero(nz.any(dim=tuple(d for d in range(3) if d != a))).flatten()]
                    for a in range(3)])
    return res


@pytest.fixture(scope="module")
def report() -> rfscope.Report:
    return rfscope.analyze(_tiny(), input_shape=SHAPE)


@pytest.mark.parametrize("name", list(MODULES))
def test_windows_match_gradient_oracle(report: rfscope.Report, name: str) -> None:
    assert report.unsupported == []
    r = report.rf(name)
    assert r.status == "exact"
    units = _units(*MODULES[name])
    for u, sup in zip(units, _oracle_supports(name, units), strict=True):
        px = r.pixels(u)
        clip = [[v for v in px[a] if 0 <= v < SHAPE[2 + a]] for a in range(3)]
        assert clip == sup, (name, u)


def test_swin3d_t_analyses_exactly() -> None:
    with torch.device("meta"):
        m = torchvision.models.video.swin3d_t()
    rep = rfscope.analyze(m, input_shape=(1, 3, 16, 224, 224))
    assert rep.unsupported == [] and rep.errors == []
    assert rep.rf("patch_embed").size == (2, 4, 4)
    # 8 frame tokens fit one window of 8 (window and shift clipped to the input): all 16 frames;
    # H, W as in 2-D Swin-T: 7-token windows, then windows shifted by 3 -> 14 tokens = 56 px
    assert rep.rf("features.0").size == (16, 56, 56)
    rec = [r for r in rep.records.values() if r.module == "features.0.0.attn"
           and r.plugin == "swin3d_window_attention"][0]
    # 8*56*56 tokens, C=96, 8*7*7-token windows: qkv 3C^2 + qk and av 2*392*C + proj C^2 per token
    assert rec.macs == 8 * 56 * 56 * (4 * 96 * 96 + 2 * 392 * 96)
