"""Per-position tables (issue 12, "token layouts") checked against the gradient oracle.

Every check compares what rfscope says an element sees with the non-zero support of the
gradient of that one element with respect to an all-ones input, in the oracle's prepared
float64 copy (``tests/oracle.py``: constant positive weights, identity activations and norms).
The oracle's support is a 2-D pixel mask here (not per axis), so a union of boxes that is not a
box would show up too.  Models are tiny: hand-written ones (class-token ViT, window attention
written with view/permute/reshape, TResNet's space-to-depth, a token-axis Conv1d, roll + flip)
and timm / torchvision transformers with small widths, depths and images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from masks import agree, bbox, box_of, claimed, nchw, nhwc, seen
from oracle import Oracle

import rfscope

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")

Index = Sequence[int]


# -- helpers ---------------------------------------------------------------------------------------
def analyze(model: nn.Module, shape: tuple[int, ...]) -> rfscope.Report:
    return rfscope.analyze(model.eval(), input_shape=shape)


def unknowns(rep: rfscope.Report) -> list[tuple[str, str | None]]:
    return [(n, r.rf.reason) for n, r in rep.records.items() if r.rf is not None and r.rf.status == "unknown"]


# -- hand-written modules --------------------------------------------------------------------------
class Attention(nn.Module):
    """timm-style attention over (B, N, C), written out (no nn.MultiheadAttention)."""

    def __init__(self, dim: int, heads: int = 2, sdpa: bool = False) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class ClassTokenViT(nn.Module):
    """Patch embed (4x4), class token cat, pos-embed add, a token MLP, then one attention block."""

    def __init__(self, dim: int = 8, patch: int = 4, grid: int = 4, sdpa: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.pre = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, sdpa=sdpa)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pre(x + self.pos_embed)
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


@pytest.fixture(scope="module", params=[False, True], ids=["matmul", "sdpa"])
def cls_vit(request: pytest.FixtureRequest) -> tuple[nn.Module, rfscope.Report, Oracle]:
    model = ClassTokenViT(sdpa=request.param).eval()
    shape = (1, 3, 16, 16)
    return model, analyze(model, shape), Oracle(model, shape, module=["pre", "attn", "mlp"])


def test_class_token_sees_nothing_before_attention(cls_vit: tuple[nn.Module, rfscope.Report, Oracle]) -> None:
    _, rep, o = cls_vit
    r = rep.rf("pre")
    assert r.table is not None and r.status == "exact"
    y = o.outs["pre"]
    for c in (0, 3, 7):
        assert r.window((0, 0, c)) is None
        assert r.table.boxes((0, 0, c)) == []
        assert not bool(seen(o, y, (0, 0, c)).any())  # the oracle: zero gradient everywhere


def test_patch_token_sees_exactly_its_patch(cls_vit: tuple[nn.Module, rfscope.Report, Oracle]) -> None:
    _, rep, o = cls_vit
    r, y = rep.rf("pre"), o.outs["pre"]
    idx = [(0, 1 + t, c) for t, c in [(0, 0), (1, 5), (5, 2), (10, 7), (15, 1)]]
    agree(r, o, y, idx)
    for t in (0, 6, 15):  # token 1 + t is patch (t // 4, t % 4) of the 4x4 grid, 4x4 pixels each
        i, j = divmod(t, 4)
        assert r.window((0, 1 + t, 0)) == box_of((4 * i, 4 * j), (4 * i + 3, 4 * j + 3))


def test_after_attention_every_token_sees_the_whole_image(cls_vit: tuple[nn.Module, rfscope.Report, Oracle]) -> None:
    _, rep, o = cls_vit
    for name in ("attn", "mlp", "output"):
        r = rep.rf(name)
        assert r.status == "global", (name, r)
        assert r.size == (16, 16)
    y = o.outs["attn"]
    for idx in [(0, 0, 0), (0, 0, 5), (0, 1, 3), (0, 16, 7)]:  # class token and patch tokens
        assert bool(seen(o, y, idx).all()), idx


# -- torchvision's VisionTransformer (nn.MultiheadAttention) ---------------------------------------
def tv_vit() -> nn.Module:
    return tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                       mlp_dim=16)


def test_torchvision_vit_tokens_before_attention() -> None:
    model = tv_vit().eval()
    rep = analyze(model, (1, 3, 32, 32))
    o = Oracle(model, (1, 3, 32, 32), module="encoder.layers.encoder_layer_0.ln_1")
    r, y = rep.rf("encoder.layers.encoder_layer_0.ln_1"), o.out
    assert r.table is not None
    assert r.window((0, 0, 0)) is None and not bool(seen(o, y, (0, 0, 0)).any())
    agree(r, o, y, [(0, 1, 0), (0, 6, 3), (0, 16, 7)])


def test_torchvision_vit_attention_is_global() -> None:
    model = tv_vit().eval()
    rep = analyze(model, (1, 3, 32, 32))
    node = "encoder.layers.encoder_layer_0.self_attention"
    assert rep.rf(node).status == "global"
    assert rep.rf("output").status == "global"
    assert unknowns(rep) == []
    o = Oracle(model, (1, 3, 32, 32), module=node)  # nn.MultiheadAttention: (out, weights)
    for idx in [(0, 0, 0), (0, 1, 3), (0, 16, 7)]:  # the class token too
        assert bool(seen(o, o.out, idx).all()), idx


# -- window attention written by hand --------------------------------------------------------------
def partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), Swin's ``window_partition``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws * ws, c)


def reverse(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C), Swin's ``window_reverse``."""
    c = x.shape[-1]
    x = x.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


class WindowBlock(nn.Module):
    """Patch embed 2x2 on a 32x32 image -> 16x16 grid; attention inside 4x4 windows (optionally shifted by
    ``shift`` with torch.roll, and the grid flipped first); the reverse partition back to (B, H, W, C)."""

    def __init__(self, dim: int = 8, ws: int = 4, shift: int = 0, flip: bool = False) -> None:
        super().__init__()
        self.ws, self.shift, self.flip = ws, shift, flip
        self.patch_embed = nn.Conv2d(3, dim, 2, 2)
        self.attn = Attention(dim)
        self.windows = nn.Identity()  # capture point: the attention's output, (B * nW, ws * ws, C)
        self.grid = nn.Identity()  # capture point: back on the (B, H, W, C) grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        if self.flip:
            x = x.flip(2)
        h, w = x.shape[1:3]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self.windows(self.attn(partition(x, self.ws)))
        x = reverse(win, self.ws, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return self.grid(x)


def window_case(**kw: Any) -> tuple[rfscope.Report, Oracle]:
    model = WindowBlock(**kw).eval()
    shape = (1, 3, 32, 32)
    return analyze(model, shape), Oracle(model, shape, module=["windows", "grid"])


def test_window_attention_token_sees_its_window() -> None:
    rep, o = window_case()
    r, y = rep.rf("windows"), o.outs["windows"]
    assert r.table is not None, r
    # window w = (w // 4, w % 4) of the 16x16 grid covers 8x8 pixels; every token of it sees all of them
    idx = [(w, t, c) for w, t, c in [(0, 0, 0), (0, 15, 3), (1, 5, 1), (6, 0, 7), (9, 10, 2), (15, 15, 5)]]
    agree(r, o, y, idx)
    for w, t, _ in idx:
        i, j = divmod(w, 4)
        assert r.window((w, t, 0)) == box_of((8 * i, 8 * j), (8 * i + 7, 8 * j + 7))


REVERSE_GRID = [(0, i, j, c) for i, j, c in [(0, 0, 0), (3, 3, 1), (4, 3, 2), (7, 12, 7), (15, 15, 4), (9, 2, 0)]]


def test_window_reverse_back_to_the_grid() -> None:
    rep, o = window_case()
    r, y = rep.rf("grid"), o.outs["grid"]
    # grid position (i, j) is in window (i // 4, j // 4): sees its 8x8 pixels
    agree(r, o, y, REVERSE_GRID, unit=nhwc, chan=-1)
    for _, i, j, _ in REVERSE_GRID:
        want = box_of((8 * (i // 4), 8 * (j // 4)), (8 * (i // 4) + 7, 8 * (j // 4) + 7))
        assert (r.window((0, i, j, 0)) if r.table is not None else r.window((i, j))) == want


class WindowThenConv(nn.Module):
    """The reverse partition, back to (B, C, H, W), then a 3x3 conv: units near a window's edge see 2x2 windows."""

    def __init__(self) -> None:
        super().__init__()
        self.block = WindowBlock()
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.block(x).permute(0, 3, 1, 2))


def test_window_reverse_then_conv() -> None:
    model = WindowThenConv().eval()
    shape = (1, 3, 32, 32)
    rep = analyze(model, shape)
    assert unknowns(rep) == []
    o = Oracle(model, shape)
    r = rep.rf("output")
    idx = [(0, 0, i, j) for i, j in [(0, 0), (2, 2), (3, 3), (4, 4), (3, 8), (15, 15), (7, 12)]]
    if r.table is not None:
        agree(r, o, o.out, [(b, 1, i, j) for b, _, i, j in idx], clip_free=False)
    else:
        agree(r, o, o.out, idx, clip_free=False)


def test_shifted_window_attention_with_roll() -> None:
    rep, o = window_case(shift=2)
    assert unknowns(rep) == []
    idx_w = [(0, 0, 0), (3, 15, 1), (5, 6, 2), (12, 3, 3), (15, 0, 4), (15, 15, 5)]  # incl. the wrapped corner
    agree(rep.rf("windows"), o, o.outs["windows"], idx_w, clip_free=False)
    idx_g = [(0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 0), (0, 15, 15, 3), (0, 0, 15, 2), (0, 7, 8, 6)]
    agree(rep.rf("grid"), o, o.outs["grid"], idx_g, clip_free=False)
    # grid (0, 0) after the shift shares a window with rows/cols 14, 15 (wrapped): two separate pieces
    assert len(rep.rf("grid").table.boxes((0, 0, 0, 0))) > 1


def test_flipped_shifted_window_attention() -> None:
    rep, o = window_case(shift=1, flip=True)
    assert unknowns(rep) == []
    idx_g = [(0, 0, 0, 0), (0, 0, 15, 1), (0, 5, 3, 2), (0, 15, 0, 3), (0, 8, 9, 7)]
    agree(rep.rf("grid"), o, o.outs["grid"], idx_g, clip_free=False)


# -- space-to-depth (TResNet) ----------------------------------------------------------------------
class SpaceToDepthView(nn.Module):
    """timm's TResNet ``SpaceToDepth``: view -> permute -> contiguous -> view (channel order (i, j, c))."""

    def __init__(self, bs: int = 4) -> None:
        super().__init__()
        self.bs = bs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x = x.view(n, c, h // self.bs, self.bs, w // self.bs, self.bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * self.bs * self.bs, h // self.bs, w // self.bs)


class SpaceToDepthReshape(SpaceToDepthView):
    """The same with reshape and no contiguous()."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // self.bs, self.bs, w // self.bs, self.bs).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, c * self.bs * self.bs, h // self.bs, w // self.bs)


class Stem(nn.Module):
    def __init__(self, s2d: nn.Module, bs: int = 4) -> None:
        super().__init__()
        self.s2d = s2d
        self.conv = nn.Conv2d(3 * bs * bs, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.s2d(x))


def s2d_channel(c: int, i: int, j: int, unshuffle: bool, bs: int = 4) -> int:
    """Channel that input channel ``c``, pixel offset ``(i, j)`` in the block lands in."""
    return c * bs * bs + i * bs + j if unshuffle else (i * bs + j) * 3 + c


def s2d_check(s2d: nn.Module, unshuffle: bool) -> None:
    model = Stem(s2d).eval()
    shape = (1, 3, 16, 16)
    rep = analyze(model, shape)
    assert unknowns(rep) == []
    o = Oracle(model, shape, module=["s2d", "conv"])
    r, y = rep.rf("s2d"), o.outs["s2d"]
    # each element of the space-to-depth output is one pixel; the conv after it sees 12x12 pixels
    full = [(0, s2d_channel(c, i, j, unshuffle), p, q) for c, i, j, p, q in
            [(0, 0, 0, 0, 0), (1, 2, 3, 1, 2), (2, 3, 1, 3, 3), (0, 1, 2, 2, 0)]]
    if r.table is not None:
        agree(r, o, y, full)
        for _, ch, p, q in full:
            i, j = divmod(ch % 16 if unshuffle else ch // 3, 4)
            assert r.window((0, ch, p, q)) == box_of((4 * p + i, 4 * q + j), (4 * p + i, 4 * q + j))
    else:  # periodic form: the unit (every channel) sees its 4x4 block
        agree(r, o, y, [(0, 0, 0, 0), (0, 0, 1, 2), (0, 0, 3, 3)])
    agree(rep.rf("conv"), o, o.outs["conv"], [(0, 0, 0, 0), (0, 1, 2, 1), (0, 3, 3, 3)], clip_free=False)


def test_space_to_depth_pixel_unshuffle() -> None:
    s2d_check(nn.PixelUnshuffle(4), unshuffle=True)


def test_space_to_depth_reshape() -> None:
    s2d_check(SpaceToDepthReshape(), unshuffle=False)


def test_space_to_depth_tresnet_view() -> None:
    s2d_check(SpaceToDepthView(), unshuffle=False)


def test_space_to_depth_same_rf_as_pixel_unshuffle() -> None:
    shape = (1, 3, 16, 16)
    a = analyze(Stem(nn.PixelUnshuffle(4)), shape)
    b = analyze(Stem(SpaceToDepthReshape()), shape)
    ra, rb = a.rf("conv"), b.rf("conv")
    assert ra.status == rb.status == "exact"
    for p, q in [(0, 0), (1, 2), (3, 3)]:  # what unit (p, q) sees, clipped to the image (zero padding sees nothing)
        assert torch.equal(claimed(ra, (0, 0, p, q), (16, 16), (p, q)), claimed(rb, (0, 0, p, q), (16, 16), (p, q)))
        lo, hi = (max(4 * p - 4, 0), max(4 * q - 4, 0)), (min(4 * p + 7, 15), min(4 * q + 7, 15))
        assert bbox(claimed(ra, (0, 0, p, q), (16, 16), (p, q))) == box_of(lo, hi)


# -- token-axis Conv1d / AvgPool1d -----------------------------------------------------------------
class TokenConv(nn.Module):
    """Patch embed 4x4 -> flatten(2) -> optional class token -> Conv1d(k=3) and AvgPool1d(2) over the tokens."""

    def __init__(self, cls: bool, dim: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, dim, 1)) if cls else None
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.pool = nn.AvgPool1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2)  # (B, C, tokens)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=2)
        return self.pool(self.conv(x))


@pytest.mark.parametrize("cls", [False, True], ids=["plain", "cls"])
def test_token_conv1d_over_a_single_row(cls: bool) -> None:
    model = TokenConv(cls).eval()
    shape = (1, 3, 4, 32)  # one row of 8 patches
    rep = analyze(model, shape)
    assert unknowns(rep) == []
    o = Oracle(model, shape, module=["conv", "pool"])
    for name, per in (("conv", 1), ("pool", 2)):
        r, y = rep.rf(name), o.outs[name]
        assert r.status == "exact", (name, r)
        n = y.shape[-1]
        idx = [(0, c, t) for c, t in [(0, 0), (1, 1), (2, n // 2), (3, n - 1)]]
        agree(r, o, y, idx, clip_free=False, unit=lambda i: (0, i[2]))  # periodic: token t is unit (0, t)
        # by hand: conv token t (class token first: t - 1) sees patches t-1..t+1 of the row, 4 pixels each
        for _, c, t in idx:
            p = t * per - int(cls)
            lo, hi = max(p - 1, 0), min(p + per, 7)
            if r.table is not None and hi >= lo:
                assert r.window((0, c, t)) == box_of((0, 4 * lo), (3, 4 * hi + 3)), (name, t)


def test_token_conv1d_across_rows_is_not_a_box() -> None:
    """A flattened 4x4 grid: the first token of a row reads the last of the row above, an L-shape."""
    model = TokenConv(cls=True).eval()
    shape = (1, 3, 16, 16)
    rep = analyze(model, shape)
    o = Oracle(model, shape, module="conv")
    r = rep.rf("conv")
    if r.status == "unknown":
        return
    # if rfscope states it, it must be exact: token 5 (patch (1, 0)) sees (0, 3), (1, 0), (1, 1)
    agree(r, o, o.out, [(0, 0, 5), (0, 1, 6), (0, 2, 0), (0, 3, 16)], clip_free=False,
          unit=lambda i: divmod(i[2] - 1, 4))


# -- timm models, tiny configs ---------------------------------------------------------------------
TIMM: dict[str, tuple[str, dict[str, Any], int]] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=2), 64),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2), 64),
    "cait": ("cait_xxs24_224", dict(img_size=64, depth=2, depth_token_only=1), 64),
    "pit": ("pit_ti_224", dict(img_size=64), 64),
    "convit": ("convit_tiny", dict(img_size=64, depth=2), 64),
    "xcit": ("xcit_nano_12_p16_224", dict(img_size=64, depth=2), 64),
    "beit": ("beit_base_patch16_224", dict(img_size=64, depth=2, embed_dim=64, num_heads=2), 64),
    "eva": ("eva02_tiny_patch14_224", dict(img_size=56, depth=2), 56),
    "davit": ("davit_tiny", dict(depths=(1, 1, 1, 1)), 56),  # 14x14 grid: windows of 7 need no padding
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4, depths=(2, 1, 1, 1)), 64),
}


@pytest.fixture(scope="module")
def timm_reports() -> dict[str, tuple[nn.Module, rfscope.Report]]:
    out = {}
    for key, (name, kw, size) in TIMM.items():
        model = timm.create_model(name, pretrained=False, **kw).eval()
        out[key] = (model, analyze(model, (1, 3, size, size)))
    return out


@pytest.mark.parametrize("key", list(TIMM))
def test_timm_model_has_no_unknown_node(key: str, timm_reports: dict[str, tuple[nn.Module, rfscope.Report]]) -> None:
    _, rep = timm_reports[key]
    assert unknowns(rep) == []
    assert rep.rf("output").status == "global"


def patch_box(size: int, grid: int, prefix: int) -> Callable[[tuple[int, ...]], Any]:
    """Token ``prefix + i * grid + j`` of a (B, N, C) tensor sees patch (i, j) of ``size`` pixels; the
    ``prefix`` class/distillation tokens see nothing."""

    def f(idx: tuple[int, ...]) -> Any:
        t = idx[1] - prefix
        if t < 0:
            return None
        i, j = divmod(t, grid)
        return box_of((size * i, size * j), (size * i + size - 1, size * j + size - 1))

    return f


@pytest.mark.parametrize("key,node,prefix,patch", [
    ("vit", "pos_drop", 1, 16),
    ("deit_distilled", "pos_drop", 2, 16),
    ("cait", "pos_drop", 0, 16),
    ("eva", "pos_drop", 1, 14),
    ("beit", "pos_drop", 1, 16),
])
def test_timm_tokens_before_attention(key: str, node: str, prefix: int, patch: int,
                                      timm_reports: dict[str, tuple[nn.Module, rfscope.Report]]) -> None:
    model, rep = timm_reports[key]
    size = TIMM[key][2]
    grid = size // patch
    o = Oracle(model, (1, 3, size, size), module=node)
    r, y = rep.rf(node), o.out
    n = y.shape[1]
    assert n == prefix + grid * grid
    idx = [(0, t, c) for t, c in [(0, 0), (prefix - 1, 1), (prefix, 2), (prefix + grid + 1, 3), (n - 1, 4)] if t >= 0]
    want = patch_box(patch, grid, prefix)
    for i in idx:
        assert (want(i) is None) == (not bool(seen(o, y, i).any())), i  # the expectation matches the oracle
        if r.table is not None:
            assert r.window(i) == want(i), (i, r.window(i))
        else:  # no prefix token: the periodic form, token t is unit divmod(t, grid)
            assert r.window(divmod(i[1], grid)) == want(i), (i, r.window(divmod(i[1], grid)))
    agree(r, o, y, idx, unit=lambda i: divmod(i[1] - prefix, grid), chan=2)


@pytest.mark.parametrize("key,node", [
    ("vit", "blocks.0"), ("deit_distilled", "blocks.0"), ("cait", "blocks.0"), ("eva", "blocks.0"),
    ("beit", "blocks.0"), ("convit", "blocks.0"), ("pit", "transformers.0"),
])
def test_timm_first_block_sees_everything(key: str, node: str,
                                          timm_reports: dict[str, tuple[nn.Module, rfscope.Report]]) -> None:
    model, rep = timm_reports[key]
    size = TIMM[key][2]
    r = rep.rf(node)
    o = Oracle(model, (1, 3, size, size), module=node)
    y = o.out
    idx = [(0, 0, 0), (0, y.shape[1] - 1, 1)] if y.dim() == 3 else [(0, 0, 0, 0), (0, 1, y.shape[2] - 1, 0)]
    masks = [seen(o, y, i) for i in idx]
    if all(bool(m.all()) for m in masks):
        assert r.status == "global", r
    else:
        agree(r, o, y, idx, clip_free=False)


@pytest.mark.parametrize("key,node,layout", [
    ("davit", "stages.0.blocks.0.0", "nchw"),  # window attention, 7x7 windows of the 14x14 grid
    ("swin", "layers.0.blocks.0", "nhwc"),  # 4x4 windows of the 16x16 grid
    ("swin", "layers.0.blocks.1", "nhwc"),  # shifted by 2 (torch.roll): windows wrap around
])
def test_timm_window_block_against_the_oracle(key: str, node: str, layout: str,
                                              timm_reports: dict[str, tuple[nn.Module, rfscope.Report]]) -> None:
    model, rep = timm_reports[key]
    size = TIMM[key][2]
    r = rep.rf(node)
    assert r.status == "exact", r
    o = Oracle(model, (1, 3, size, size), module=node)
    y = o.out
    if layout == "nchw":
        idx = [(0, c, i, j) for c, i, j in [(0, 0, 0), (1, 3, 2), (2, 9, 5), (3, 6, 6), (5, 7, 7), (6, 13, 13)]]
        agree(r, o, y, idx, clip_free=False)
    else:
        idx = [(0, i, j, c) for i, j, c in [(0, 0, 0), (1, 3, 2), (5, 9, 1), (6, 6, 3), (15, 15, 4), (0, 15, 5)]]
        agree(r, o, y, idx, clip_free=False, unit=nhwc, chan=-1)


# -- padded windows cropped back to tokens (timm DaViT at 64: 16x16 grid, windows of 7) --------------
class PaddedWindows(nn.Module):
    """Tokens (B, N, C) -> (B, H, W, C), padded 16 -> 21, each token the mean of its 7x7 window, cropped back
    to 16x16 and to tokens, plus the shortcut: DaViT's SpatialBlock with the attention replaced by a mean."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, 1, 4, 4)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1).reshape(1, 256, 1)  # 16x16 tokens of 4x4 pixels
        y = F.pad(x.view(1, 16, 16, 1), (0, 0, 0, 5, 0, 5))  # (1, 21, 21, 1)
        y = y.view(1, 3, 7, 3, 7, 1).mean((2, 4), keepdim=True).expand(1, 3, 7, 3, 7, 1).reshape(1, 21, 21, 1)
        return self.out(x + y[:, :16, :16].reshape(1, 256, 1))


def test_padded_windows_cropped_back_to_tokens() -> None:
    model = PaddedWindows().eval()
    shape = (1, 1, 64, 64)
    rep = analyze(model, shape)
    o = Oracle(model, shape, module="out")
    r = rep.rf("out")
    # grid (i, j) = token 16 i + j sees its window (i // 7, j // 7), 28x28 pixels (clipped to the image)
    agree(r, o, o.out, [(0, 16 * i + j, 0) for i, j in [(0, 0), (1, 4), (6, 7), (8, 8), (15, 15)]], clip_free=False,
          unit=lambda t: divmod(t[1], 16), chan=2)


@pytest.mark.parametrize("key,node,prefix", [
    ("pit", "transformers.0.blocks.0.norm1", 1),  # class token cat inside the stage; 16x16 patches, stride 8
    ("deit_distilled", "blocks.0.norm1", 2),
    ("convit", "blocks.0.norm1", 0),
])
def test_timm_table_node_before_attention(key: str, node: str, prefix: int,
                                          timm_reports: dict[str, tuple[nn.Module, rfscope.Report]]) -> None:
    model, rep = timm_reports[key]
    size = TIMM[key][2]
    r = rep.rf(node)
    o = Oracle(model, (1, 3, size, size), module=node)
    y = o.out
    n = y.shape[1]
    grid = int(round((n - prefix) ** 0.5))
    assert grid * grid == n - prefix
    idx = [(0, t, c) for t, c in [(0, 0), (prefix, 1), (prefix + grid, 2), (prefix + grid + 2, 3), (n - 1, 4)]]
    for t in range(prefix):  # class / distillation tokens
        assert r.window((0, t, t)) is None and not bool(seen(o, y, (0, t, t)).any())
    agree(r, o, y, idx, clip_free=False, unit=lambda i: divmod(i[1] - prefix, grid), chan=2)


def test_timm_tresnet_space_to_depth() -> None:
    """timm's TResNet: SpaceToDepth(4) (view/permute/contiguous/view) then a 3x3 conv, 0 unknown nodes."""
    model = timm.create_model("tresnet_m", pretrained=False).eval()
    shape = (1, 3, 64, 64)
    rep = analyze(model, shape)
    assert unknowns(rep) == []
    assert rep.rf("output").status == "global"
    o = Oracle(model, shape, module=["body.s2d", "body.conv1"])
    r, y = rep.rf("body.s2d"), o.outs["body.s2d"]
    if r.table is not None:  # channel (i * 4 + j) * 3 + c at (p, q) is pixel (4p + i, 4q + j)
        agree(r, o, y, [(0, s2d_channel(c, i, j, False), p, q) for c, i, j, p, q in
                        [(0, 0, 0, 0, 0), (1, 2, 3, 5, 2), (2, 3, 1, 15, 15), (0, 1, 2, 7, 0)]])
    else:
        agree(r, o, y, [(0, 0, 0, 0), (0, 0, 5, 2), (0, 0, 15, 15)])
    rc, yc = rep.rf("body.conv1"), o.outs["body.conv1"]
    agree(rc, o, yc, [(0, 0, 0, 0), (0, 1, 5, 2), (0, 2, 15, 15), (0, 3, 7, 8)], clip_free=False)


# -- MaxViT's grid partition: a window of tokens spread over the whole grid (dilated) ---------------
class GridAttention(nn.Module):
    """Patch embed 2x2 on 32x32 -> 16x16 grid; ``grid_partition`` with a 4x4 grid: window (hi, wi) holds the
    positions (4 gi + hi, 4 gj + wi), 16 patches 8 pixels apart; attention inside; ``grid_reverse``."""

    def __init__(self, dim: int = 8, g: int = 4) -> None:
        super().__init__()
        self.g = g
        self.patch_embed = nn.Conv2d(3, dim, 2, 2)
        self.attn = Attention(dim)
        self.windows = nn.Identity()
        self.grid = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        g = self.g
        x = x.view(b, g, h // g, g, w // g, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c)
        x = self.windows(self.attn(x))
        x = x.view(b, h // g, w // g, g, g, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)
        return self.grid(x)


def test_grid_partition_attention_is_never_overstated() -> None:
    """The tokens of a grid window see 16 separate 2x2 patches: not a box, not the whole image.  rfscope may
    say unknown; if it states an RF it must be the oracle's (and never global)."""
    model = GridAttention().eval()
    shape = (1, 3, 32, 32)
    rep = analyze(model, shape)
    o = Oracle(model, shape, module=["windows", "grid"])
    for name, idx, unit in [("windows", [(0, 0, 0), (5, 3, 1), (15, 15, 2)], nchw),
                            ("grid", [(0, 0, 0, 0), (0, 5, 9, 1), (0, 15, 15, 2)], nhwc)]:
        r = rep.rf(name)
        want = seen(o, o.outs[name], idx[0])
        assert int(want.sum()) == 16 * 4 and not bool(want.all())  # the oracle: 16 patches of 2x2
        assert r.status != "global", (name, r)
        if r.status == "exact":
            agree(r, o, o.outs[name], idx, clip_free=False, unit=unit, chan=-1)


@pytest.mark.parametrize("d", [2, 3])
def test_dilated_windows_enter_a_table_as_several_boxes(d: int) -> None:
    """A periodic window with holes (a dilated conv) enters a table as one box per run of pixels: a
    class token ``cat`` after it, every element against the oracle."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, dilation=d, padding=d)
            self.cls = nn.Parameter(torch.zeros(1, 1, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).flatten(2).transpose(1, 2)
            return torch.cat([self.cls.expand(y.shape[0], -1, -1), y], 1)

    model = Net().eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8))
    r = rep.rf("output")
    assert r.status == "exact" and r.table is not None, r
    o = Oracle(model, (1, 1, 8, 8))
    y = o.out
    for t in range(y.shape[1]):
        assert torch.equal(claimed(r, (0, t, 1), (8, 8)), seen(o, y, (0, t, 1), None)), (t, r.table.boxes((0, t, 1)))
    assert len(r.table.boxes((0, 1 + 8 * 4 + 4, 1))) == 9  # an interior unit: 3 x 3 one-pixel boxes
