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

from masks import bbox  # noqa: E402
from oracle import _Mode, prepare  # noqa: E402

import rfscope  # noqa: E402

QK = 1e-6  # q/k scaled so that logits stay ~0: no softmax weight underflows (see tests/test_swin.py)
TINY = 1e-30  # below this fraction of a unit's largest gradient: the exp(-100) pieces
SHAPE = (1, 3, 14, 44, 44)  # tokens 7 x 11 x 11 (window 4: padded 8 x 12 x 12), then 7 x 6 x 6


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return video_swin.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                        window_size=[4, 4, 4], stochastic_depth_prob=0.0, num_classes=3)


# features.0.1: shift 2 on every axis; the roll wraps real token 6 of T (7 -> 8 padded) next to
# tokens 0, 1, and token 10 of H, W (11 -> 12); features.1: patch merging over H, W (T untouched);
# features.2.1: 7 x 6 x 6 tokens (padded 8): T wraps, H and W wrap only padding
# (unit: (frames, rows/cols, channels))
MODULES = {"features.0.0": (7, 11, 8), "features.0.1": (7, 11, 8), "features.1": (7, 6, 16),
           "features.2.1": (7, 6, 16)}
TINY_SEEN: dict[str, bool] = {}


def _units(t: int, n: int) -> list[tuple[int, int, int]]:
    ts = sorted({0, 1, t // 2, t - 1})
    ns = sorted({0, 1, n // 2, n - 2, n - 1})
    return [u for u in itertools.product(ts, ns, ns) if u[1] == u[2] or {u[1], u[2]} & {0, n - 1}]


def _oracle_supports(name: str, units: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Per unit (all channels), the (T, H, W) mask of pixels with a non-zero float64 gradient."""
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
        assert mag.max() > 0
        TINY_SEEN[name] = TINY_SEEN.get(name, False) or bool(((mag != 0) & (mag < TINY * mag.max())).any())
        res.append(mag != 0)
    return res


def _claimed(r: rfscope.RF, u: tuple[int, int, int], channels: int) -> torch.Tensor:
    """rfscope's (T, H, W) mask of unit ``u``: a table's boxes over every channel, or the periodic pixels."""
    m = torch.zeros(SHAPE[2:], dtype=torch.bool)
    if r.table is not None:
        for c in range(channels):
            for box in r.table.boxes((0, *u, c)):
                m[tuple(slice(max(lo, 0), max(hi + 1, 0)) for lo, hi in box)] = True
        return m
    px = r.pixels(u)
    axes = []
    for a in range(3):
        v = torch.zeros(SHAPE[2 + a], dtype=torch.bool)
        v[[p for p in px[a] if 0 <= p < SHAPE[2 + a]]] = True
        axes.append(v)
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]


@pytest.fixture(scope="module")
def report() -> rfscope.Report:
    return rfscope.analyze(_tiny(), input_shape=SHAPE)


@pytest.mark.parametrize("name", list(MODULES))
def test_windows_match_gradient_oracle(report: rfscope.Report, name: str) -> None:
    """Every probed unit: rfscope's pixels are exactly the oracle's non-zero gradient, no threshold."""
    assert report.unsupported == []
    r = report.rf(name)
    assert r.status == "exact"
    t, n, channels = MODULES[name]
    units = _units(t, n)
    for u, want in zip(units, _oracle_supports(name, units), strict=True):
        got = _claimed(r, u, channels)
        assert torch.equal(got, want), (name, u, bbox(got), bbox(want))
    # the wrapped pieces, in the RF, weigh ~exp(-100): in the oracle's support with tiny gradients (at
    # features.2.1 every token already saw every frame through other paths)
    assert TINY_SEEN[name] == (name in ("features.0.1", "features.1"))


def test_swin3d_t_analyses_exactly() -> None:
    with torch.device("meta"):
        m = torchvision.models.video.swin3d_t()
    rep = rfscope.analyze(m, input_shape=(1, 3, 16, 224, 224))
    assert rep.unsupported == [] and rep.errors == []
    assert rep.rf("patch_embed").size == (2, 4, 4)
    # 8 frame tokens fit one window of 8 (window and shift clipped to the input): all 16 frames;
    # H, W as in 2-D Swin-T: 7-token windows, then windows shifted by 3 -> 14 tokens = 56 px for an
    # interior token; a token whose rolled window wrapped also sees the far side of the image
    r = rep.rf("features.0")
    assert r.table is None
    assert r.window((3, 20, 20)) == ((0, 15), (56, 111), (56, 111))
    assert r.pixels((3, 0, 20)) == (list(range(16)), [*range(0, 28), *range(196, 224)], list(range(56, 112)))
    assert r.size == (16, 224, 224)
    assert rep.rf("output").status == "global"
    rec = [r for r in rep.records.values() if r.module == "features.0.0.attn"
           and r.plugin == "swin3d_window_attention"][0]
    # 8*56*56 tokens, C=96, 8*7*7-token windows: qkv 3C^2 + qk and av 2*392*C + proj C^2 per token
    assert rec.macs == 8 * 56 * 56 * (4 * 96 * 96 + 2 * 392 * 96)
