"""Swin Transformer's shifted-window attention and patch merging: exact RF vs a gradient oracle.

The oracle (tests/oracle.py: float64 copy, positive constant weights, norms and
dropout the identity) runs torchvision's own ``shifted_window_attention``: its
pad/roll/partition/mask/reverse index maps are PyTorch's, not rfscope's.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from masks import bbox  # noqa: E402
from oracle import _Mode, prepare  # noqa: E402
from torchvision.models.swin_transformer import SwinTransformer  # noqa: E402

import rfscope  # noqa: E402

# The attention mask is additive -100, not -inf: a unit keeps a weight of about
# exp(-100 + logit difference) on the piece the cyclic roll wrapped around, so
# that piece is part of the exact RF.  The oracle drops the norms, so activations
# grow; it scales the q/k projections by QK so that logits stay ~0 and no softmax
# weight underflows to 0 in float64: its non-zero gradient is the exact dependence.
QK = 1e-6
TINY = 1e-30  # below this fraction of a unit's largest gradient: the exp(-100) pieces

SIDE = 56  # tokens 14x14 (window 4: padded to 16), then 7x7 (padded to 8): padding and odd merging


def _tiny() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                           window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=3)


# features.1.0: no shift; features.1.1: shift 2; features.2: patch merging (14 -> 7);
# features.3.1: shift 2 on 7x7 padded to 8
MODULES = ["features.1.0", "features.1.1", "features.2", "features.3.1"]


def _units(n: int) -> list[tuple[int, int]]:
    picks = sorted({0, 1, 2, n // 2, n - 3, n - 2, n - 1})
    return [(i, j) for i, j in itertools.product(picks, picks) if i == j or {i, j} & {0, n - 1}]


TINY_SEEN: dict[str, bool] = {}  # per module: did some unit depend on a pixel through exp(-100) only?


def _oracle_supports(name: str, units: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per unit (all channels), the (H, W) mask of pixels with a non-zero float64 gradient."""
    model = prepare(_tiny())
    with torch.no_grad():  # biases 0: only the index maps matter
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.zero_()
            elif pname.endswith("qkv.weight"):
                p[: 2 * p.shape[1]] *= QK  # q and k rows: still positive, logits ~0
    x = torch.ones((len(units), 3, SIDE, SIDE), dtype=torch.float64, requires_grad=True)
    outs: list[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_hook(lambda _m, _i, o: outs.append(o))
    with _Mode(local=False):
        model.features(x)
    h.remove()
    y = outs[0]  # (B, H, W, C): channels last
    go = torch.zeros_like(y)
    for b, (i, j) in enumerate(units):
        go[b, i, j, :] = 1.0  # channel-summed unit
    (g,) = torch.autograd.grad(y, x, go)
    res = []
    for b in range(len(units)):
        mag = g[b].abs().sum(0)  # (H, W) over input channels
        assert mag.max() > 0
        TINY_SEEN[name] = TINY_SEEN.get(name, False) or bool(((mag != 0) & (mag < TINY * mag.max())).any())
        res.append(mag != 0)
    return res


def _claimed(r: rfscope.RF, i: int, j: int, channels: int) -> torch.Tensor:
    """rfscope's (H, W) mask of unit (i, j): a table's boxes over every channel, or the periodic pixels."""
    m = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    if r.table is not None:
        for c in range(channels):
            for box in r.table.boxes((0, i, j, c)):
                m[tuple(slice(max(lo, 0), max(hi + 1, 0)) for lo, hi in box)] = True
        return m
    ph, pw = r.pixels((i, j))
    rows = torch.zeros(SIDE, dtype=torch.bool)
    cols = torch.zeros(SIDE, dtype=torch.bool)
    rows[[v for v in ph if 0 <= v < SIDE]] = True
    cols[[v for v in pw if 0 <= v < SIDE]] = True
    return rows[:, None] & cols[None, :]


@pytest.fixture(scope="module")
def report() -> rfscope.Report:
    return rfscope.analyze(_tiny(), input_shape=(1, 3, SIDE, SIDE))


@pytest.mark.parametrize("name", MODULES)
def test_windows_match_gradient_oracle(report: rfscope.Report, name: str) -> None:
    """Every probed unit: rfscope's pixels are exactly the oracle's non-zero gradient, no threshold."""
    assert report.unsupported == []
    r = report.rf(name)
    assert r.status == "exact"
    n = 14 if name.startswith("features.1") else 7
    channels = 8 if name.startswith("features.1") else 16
    units = _units(n)
    for (i, j), want in zip(units, _oracle_supports(name, units), strict=True):
        got = _claimed(r, i, j, channels)
        assert torch.equal(got, want), (name, (i, j), bbox(got), bbox(want))
    # 7 tokens padded to 8, shift 2: the roll wraps real token 6 next to tokens 0, 1, which
    # the soft mask separates only up to exp(-100): in the RF, with a gradient ~1e-44 of the
    # largest; at 14 -> 16 only padding wraps.  Earlier blocks carry such pieces on to features.2.
    assert TINY_SEEN[name] == (name == "features.3.1")


def test_shifted_block_sees_neighbouring_windows(report: rfscope.Report) -> None:
    # hand-derived: token t of the unshifted block sees tokens [4*(t//4), +4) = 16 px;
    # the shifted block (shift 2) unions two such windows for interior tokens: 32 px
    assert report.rf("features.1.0").window((5, 5)) == ((16, 31), (16, 31))
    assert report.rf("features.1.1").window((5, 5)) == ((0, 31), (0, 31))
    # token 0 in the shifted block: lattice window tokens [-2, 2) -> pixels [-16, 16)
    assert report.rf("features.1.1").window((0, 0)) == ((-16, 15), (-16, 15))


def test_swin_t_exact() -> None:
    rep = rfscope.analyze(torchvision.models.swin_t(), input_shape=(1, 3, 224, 224))
    assert rep.unsupported == []
    for k in range(1, 8):
        assert rep.rf(f"features.{k}").status == "exact", k
    assert rep.rf("features.0").size == (4, 4)
    # stage 1: 4x4 patches, 7x7 windows (28 px), then windows shifted by 3: an interior token
    # sees two windows, 14 tokens = 56 px ...
    r = rep.rf("features.1")
    assert r.table is None  # periodic: the rolled window is a product of per-axis sets
    assert r.window((20, 20)) == ((56, 111), (56, 111))
    # ... and a token whose rolled window wrapped (56 = 8 windows of 7: always) sees both ends
    # of the image, weighted ~exp(-100) by the mask: its bounding box is the whole image, with a hole
    ends = [*range(0, 28), *range(196, 224)]
    assert r.pixels((0, 20)) == (ends, list(range(56, 112)))
    assert r.pixels((0, 0)) == (ends, ends)
    assert r.size == (224, 224) and r.coverage == (Fraction(1, 4), Fraction(1, 4))
    # from stage 3 on every token sees the whole image through its windows
    r5 = rep.rf("features.5")
    assert r5.table is None and r5.size == (224, 224) and r5.coverage == (1, 1)
    assert rep.rf("output").status == "global" and rep.rf("output").size == (224, 224)
    rec = [r for r in rep.records.values() if r.module == "features.1.0.attn" and r.plugin][0]
    # 56*56 tokens, C=96, 49-token windows: qkv 3C^2 + qk and av 2*49*C + proj C^2 per token
    assert rec.macs == 56 * 56 * (4 * 96 * 96 + 2 * 49 * 96)



def test_wrapped_windows_enter_a_table() -> None:
    """A class token ``cat`` after torchvision's Swin needs a table; the wrapped windows (periodic,
    with holes) enter it as several boxes, each token's the same pixels as its periodic unit.
    60 px: 15x15 tokens padded to 16, shift 2: the roll wraps real token 14 next to tokens 0, 1."""
    side = 60

    class WithClassToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = _tiny().features[:2]
            self.cls = torch.nn.Parameter(torch.zeros(1, 1, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.features(x).flatten(1, 2)
            return torch.cat([self.cls.expand(y.shape[0], -1, -1), y], 1)

    rep = rfscope.analyze(WithClassToken(), input_shape=(1, 3, side, side))
    per, tab = rep.rf("features.1"), rep.rf("output")
    assert per.table is None and tab.status == "exact" and tab.table is not None
    several = 0
    for i, j in itertools.product(range(15), range(15)):
        ph, pw = per.pixels((i, j))
        rows, cols = torch.zeros(side, dtype=torch.bool), torch.zeros(side, dtype=torch.bool)
        rows[[p for p in ph if 0 <= p < side]] = True
        cols[[p for p in pw if 0 <= p < side]] = True
        want = rows[:, None] & cols[None, :]
        boxes = tab.table.boxes((0, 1 + 15 * i + j, 5))
        got = torch.zeros(side, side, dtype=torch.bool)
        for box in boxes:
            got[tuple(slice(max(lo, 0), max(hi + 1, 0)) for lo, hi in box)] = True
        assert torch.equal(got, want), ((i, j), bbox(got), bbox(want))
        several += len(boxes) > 1
    assert several > 0  # the tokens whose window wrapped: more than one box
    assert tab.table.boxes((0, 0, 5)) == []  # the class token sees nothing
