"""Targeted operations with receptive fields derived by hand (in each test's comment).

Notation: one spatial axis, the input is ``r=1, j=1, P=0``; unit ``i`` of a
``(r, j, P)`` map sees ``[i*j - P, i*j - P + r - 1]``.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rfscope
from rfscope.passes.interpret import StrictError

Fr = Fraction


def rf1(model: nn.Module, n: int = 32, name: str = "output", c: int = 1) -> rfscope.RF:
    return rfscope.analyze(model, input_shape=(1, c, n)).rf(name)


def test_transposed_conv_k3_s2_phase_sizes() -> None:
    # o = 2u + t, t in {0,1,2}: even o = 2m reads u in {m-1, m}, odd o reads u = m only.
    r = rf1(nn.ConvTranspose1d(1, 1, 3, stride=2))
    assert r.status == "exact"
    assert r.stride == (Fr(1, 2),)
    assert r.sizes == ((2, 1),)
    assert r.pixels((4,)) == ([1, 2],)
    assert r.pixels((5,)) == ([2],)
    assert r.window((0,)) == ((-1, 0),)
    # after a k=3 conv (r=3) the phases see 3 + 1 and 3 pixels
    r = rf1(nn.Sequential(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 3, stride=2)))
    assert r.sizes == ((4, 3),)


def test_unet_k2_s2_adds_nothing() -> None:
    # o = 2u + t, t in {0,1}: each output reads exactly one input unit.
    r = rf1(nn.Sequential(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 2, stride=2)))
    assert r.size == (3,) and r.sizes == ((3, 3),) and r.stride == (Fr(1, 2),)
    assert r.window((4,)) == ((2, 4),) and r.window((5,)) == ((2, 4),)


def test_dcgan_k4_s2_p1_adds_j() -> None:
    # conv k3 s2 p1: r=3, j=2, P=1, unit u sees [2u-1, 2u+1].  DCGAN upsampling o = 2u - 1 + t,
    # t in 0..3: o=2m reads u in {m-1, m} (t=3,1), o=2m+1 reads {m, m+1} (t=2,0): size 3 + j = 5.
    # unit 0 reads u=-1,0: [-3, 1] (P=3); units 1 and 2 read u=0,1: [-1, 3]; unit 3: [1, 5].
    r = rf1(nn.Sequential(nn.Conv1d(1, 1, 3, 2, 1), nn.ConvTranspose1d(1, 1, 4, 2, 1)))
    assert r.size == (5,) and r.stride == (Fr(1),) and r.padding == (Fr(3),)
    assert [r.window((i,))[0] for i in range(4)] == [(-3, 1), (-1, 3), (-1, 3), (1, 5)]


def test_bilinear_x2_like_k4_s2_p1() -> None:
    # align_corners=False: src = o/2 - 0.25; o=2m reads {m-1, m}, o=2m+1 reads {m, m+1}.
    up = nn.Upsample(scale_factor=2, mode="linear")
    r = rfscope.analyze(up, input_shape=(1, 1, 16)).rf("output")
    assert r.stride == (Fr(1, 2),) and r.size == (2,)
    assert r.pixels((4,)) == ([1, 2],) and r.pixels((5,)) == ([2, 3],)
    r2 = rfscope.analyze(nn.Upsample(scale_factor=2, mode="bilinear"), input_shape=(1, 1, 16, 16)).rf("output")
    assert r2.pixels((4, 5)) == ([1, 2], [2, 3])
    # the same windows as the k=4, s=2, p=1 transposed conv (o=2m reads {m-1, m}, o=2m+1 {m, m+1})
    t = rf1(nn.ConvTranspose1d(1, 1, 4, 2, 1), 16)
    assert [t.window((i,)) for i in range(2, 12)] == [r.window((i,)) for i in range(2, 12)]


def test_nearest_x2() -> None:
    # o reads floor(o/2): no growth, centres repeat.
    r = rf1(nn.Sequential(nn.Conv1d(1, 1, 3), nn.Upsample(scale_factor=2)))
    assert r.size == (3,) and r.stride == (Fr(1, 2),)
    assert r.window((4,)) == ((2, 4),) and r.window((5,)) == ((2, 4),) and r.window((6,)) == ((3, 5),)


def test_pixel_shuffle_and_unshuffle() -> None:
    # conv k3 s2 p1 (r=3, j=2, P=1), then PixelShuffle(2): o reads o//2, j = 1.
    m = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.PixelShuffle(2))
    r = rfscope.analyze(m, input_shape=(1, 1, 16, 16)).rf("output")
    assert r.size == (3, 3) and r.stride == (Fr(1), Fr(1)) and r.padding == (Fr(1), Fr(1))
    assert r.window((0, 1)) == ((-1, 1), (-1, 1))
    # PixelUnshuffle(2) is a k=2, s=2 conv.
    r = rfscope.analyze(nn.PixelUnshuffle(2), input_shape=(1, 1, 16, 16)).rf("output")
    assert r.size == (2, 2) and r.stride == (Fr(2), Fr(2)) and r.padding == (Fr(0), Fr(0))


def test_dilated_gridding_and_hdc() -> None:
    # rates 2,2,2 with k=3: offsets {0,2,...,12}: bounding box 13, 7 pixels seen.
    grid = nn.Sequential(*[nn.Conv1d(1, 1, 3, dilation=2) for _ in range(3)])
    r = rf1(grid, 64)
    assert r.size == (13,) and r.coverage == (Fr(7, 13),)
    assert r.pixels((0,)) == (list(range(0, 13, 2)),)
    # rates 1,2,5 (hybrid dilated convolution): {0..2} -> {0..6} -> {0..16}, dense.
    hdc = nn.Sequential(*[nn.Conv1d(1, 1, 3, dilation=d) for d in (1, 2, 5)])
    r = rf1(hdc, 64)
    assert r.size == (17,) and r.coverage == (Fr(1),)


def test_same_padding_even_kernel_extra_pixel_right() -> None:
    # k=4 'same': total pad 3, PyTorch puts 1 left and 2 right: unit i sees [i-1, i+2].
    rep = rfscope.analyze(nn.Conv2d(1, 1, (4, 2), padding="same"), input_shape=(1, 1, 10, 10))
    r = rep.rf("output")
    assert r.size == (4, 2) and r.padding == (Fr(1), Fr(0))
    assert r.window((5, 5)) == ((4, 7), (5, 6))
    assert rep.graph.nodes[rep.node_name("output")]["shape"] == (1, 1, 10, 10)


def test_ceil_mode_keeps_windows_adds_a_unit() -> None:
    # length 7, k=2 s=2: floor gives 3 units, ceil_mode 4; unit 3 is [6, 7] (7 is past the end).
    rep = rfscope.analyze(nn.MaxPool1d(2, 2, ceil_mode=True), input_shape=(1, 1, 7))
    r = rep.rf("output")
    assert (r.size, r.stride, r.padding) == ((2,), (Fr(2),), (Fr(0),))
    assert r.window((3,)) == ((6, 7),)
    assert rep.graph.nodes[rep.node_name("output")]["shape"] == (1, 1, 4)


def test_adaptive_pool_not_divisible() -> None:
    # 8 -> 3: start = floor(8i/3), end = ceil(8(i+1)/3): [0,2], [2,5], [5,7]; stride 8/3.
    r = rf1(nn.AdaptiveAvgPool1d(3), 8)
    assert r.status == "exact"
    assert [r.window((i,)) for i in range(3)] == [((0, 2),), ((2, 5),), ((5, 7),)]
    assert r.stride == (Fr(8, 3),)
    # 8 -> 4 divides: a k=2, s=2 pool
    r = rf1(nn.AdaptiveMaxPool1d(4), 8)
    assert (r.size, r.stride, r.padding, r.sizes) == ((2,), (Fr(2),), (Fr(0),), ((2,),))
    # to 1: global
    assert rfscope.analyze(nn.AdaptiveAvgPool2d(1), input_shape=(1, 1, 8, 8)).rf("output").status == "global"


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, 2, 1)
        self.fc2 = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(y)))))
        return y * s


def test_se_block_global_with_local_rf() -> None:
    rep = rfscope.analyze(nn.Sequential(SE(4), nn.Conv2d(4, 4, 3)), input_shape=(1, 4, 16, 16))
    r = rep.rf("0")
    assert r.status == "global" and r.size == (16, 16)
    loc = rep.rf("0", local=True)
    assert loc.status == "exact" and loc.size == (3, 3) and loc.padding == (Fr(1), Fr(1))
    # the local RF keeps growing through local ops downstream
    assert rep.rf("1", local=True).size == (5, 5)
    assert rep.to_dict()["modules"]["1"]["rf"]["local"]["size"] == [5, 5]


def test_flatten_linear_is_global_without_local_path() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 5))
    rep = rfscope.analyze(m, input_shape=(1, 1, 8, 8))
    assert rep.rf("2").status == "global"
    with pytest.raises(ValueError, match="no spatially local path"):
        rep.rf("2", local=True)


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.dw = nn.Conv2d(8, 8, 5, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.fc(self.norm(y))
        return self.dw(y.permute(0, 3, 1, 2))


def test_channels_last_linear_and_layernorm_are_pointwise() -> None:
    rep = rfscope.analyze(ChannelsLast(), input_shape=(1, 3, 16, 16))
    assert rep.rf("fc").status == "exact" and rep.rf("fc").size == (3, 3)
    assert rep.rf("norm").status == "exact"
    assert rep.rf("output").size == (7, 7)


def test_layernorm_over_spatial_dims_is_global() -> None:
    m = nn.Sequential(nn.Conv2d(1, 1, 3), nn.LayerNorm([6, 6]))
    r = rfscope.analyze(m, input_shape=(1, 1, 8, 8)).rf("1")
    assert r.status == "global" and r.local is not None and r.local.size == (3, 3)
    g = rfscope.analyze(nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4)), input_shape=(1, 4, 8, 8))
    assert g.rf("1").status == "global" and g.rf("1", local=True).size == (3, 3)


class NoPlugin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 1, 3)
        self.b = nn.Conv1d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(self.a(x), dim=-1))


def test_op_without_plugin_is_unknown_downstream_and_listed() -> None:
    rep = rfscope.analyze(NoPlugin(), input_shape=(1, 1, 16))
    assert rep.rf("a").status == "exact"
    for name in ("b", "output"):
        r = rep.rf(name)
        assert r.status == "unknown" and "cumsum" in (r.reason or "")
    assert any("cumsum" in u for u in rep.unsupported)
    assert rep.to_dict()["modules"]["b"]["rf"]["reason"]
    with pytest.raises(StrictError, match="cumsum"):
        rfscope.analyze(NoPlugin(), input_shape=(1, 1, 16), strict=True)


class Google(nn.Module):
    """receptive_field's misaligned toy graph: branch jumps 4 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1, stride=4)
        self.b = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.c = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x) + self.b(x)[..., ::2, ::2][..., :8, :8].contiguous() * 0 + self.b(x)[..., :8, :8])


def test_misaligned_merge_reported_with_reason() -> None:
    # the stride-4 and stride-2 branches meet in add_1: each element sees a pixel and a 3x3 box, an
    # exact per-position union; the 3x3 conv c over it would mix three separate pixels along an
    # axis (4i - 4, 4i, 4i + 4): not a union of boxes, so c is unknown, never a guessed number
    rep = rfscope.analyze(Google(), input_shape=(1, 1, 32, 32))
    for name in ("c", "output"):
        r = rep.rf(name)
        assert r.status == "unknown" and ("runs along an axis" in (r.reason or "") or "boxes" in (r.reason or ""))
        assert r.to_dict()["size"] == [0, 0] and r.stride == (None, None)


class MaxOfBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 1, 3)
        self.b = nn.Conv1d(1, 1, 5, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.max(self.a(x), self.b(x)) + self.a(x).min(self.b(x))


def test_binary_max_min_are_elementwise_merges() -> None:
    # a: unit i sees [i, i+2]; b (k5 p1): [i-1, i+3]; union [i-1, i+3]: size 5, P=1.
    r = rf1(MaxOfBranches(), 16)
    assert (r.status, r.size, r.padding) == ("exact", (5,), (Fr(1),))


class Area(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(8, 5), mode="area")


def test_interpolate_area_is_adaptive_average_pooling() -> None:
    # 16 -> 8: k=2, s=2.  8 -> 5: [floor(8i/5), ceil(8(i+1)/5)): [0,1] [1,3] [3,4] [4,6] [6,7].
    r = rfscope.analyze(Area(), input_shape=(1, 1, 16, 8)).rf("output")
    assert r.status == "exact" and r.stride == (Fr(2), Fr(8, 5))
    assert [r.window((3, i))[1] for i in range(5)] == [(0, 1), (1, 3), (3, 4), (4, 6), (6, 7)]
    assert r.window((3, 0))[0] == (6, 7)


def test_upsample_align_corners_stride() -> None:
    # align_corners=True maps output o to o*(n_in-1)/(n_out-1): 8 -> 16 gives stride 7/15, not 1/2.
    r = rfscope.analyze(nn.Upsample(scale_factor=2, mode="linear", align_corners=True),
                        input_shape=(1, 1, 8)).rf("output")
    assert r.status == "exact" and r.stride == (Fr(7, 15),)
    # o=5: 5*7/15 = 2.33 reads 2 and 3; o=15 reads 7 only
    assert r.pixels((5,)) == ([2, 3],) and r.pixels((15,)) == ([7],)


def test_float_rounding_breaks_periodicity_unknown_not_a_guess() -> None:
    # 46 -> 115 with align_corners: stride 45/114 = 15/38, but in float32 o*scale is 0.0 at o=0 and
    # 15.000001 at o=38 (which also reads input 16, with a tiny weight): no periodic map fits every unit.
    # No periodic RF: the per-position table states each row's window, which must be what PyTorch's
    # float32 kernel reads (rows with a non-zero weight, found by resizing each input row alone).
    up = nn.Upsample(scale_factor=(2.5, 2.0), mode="bilinear", align_corners=True)
    r = rfscope.analyze(up, input_shape=(1, 1, 46, 8)).rf("output")
    assert r.status == "unknown" or r.table is not None, r
    if r.table is None:
        return
    eye = torch.eye(46).view(46, 1, 46, 1).expand(46, 1, 46, 8).contiguous()
    reads = up(eye)[:, 0, :, 0].ne(0)  # (input row, output row)
    assert bool(reads[16, 38])  # the tiny weight the comment above is about
    for o in range(115):
        rows = reads[:, o].nonzero().flatten().tolist()
        assert r.window((0, 0, o, 0))[0] == (min(rows), max(rows)), o


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.post = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = y.shape
        t = y.flatten(2).transpose(1, 2)
        t = self.mha(t, t, t)[0]
        return self.post(t.transpose(1, 2).reshape(n, c, h, w))


def test_attention_over_positions_is_global() -> None:
    rep = rfscope.analyze(Attention(), input_shape=(1, 1, 6, 6))
    assert rep.rf("conv").status == "exact"
    assert rep.rf("post").status == "global" and rep.rf("post").size == (6, 6)


class EmptyUnits(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.up = (nn.ConvTranspose1d(1, 1, 1, 2) if n == 1 else nn.ConvTranspose2d(1, 1, 1, (2, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(x[:, :, ::2])  # k=1 < s=2: odd units (along dim 2) see no pixel
        return y + x[:, :, :7]


def test_merge_with_units_that_see_nothing() -> None:
    # 1-D: odd unit i sees only x[i] (the other branch is empty there); even unit i sees x[i] too.
    r = rfscope.analyze(EmptyUnits(1), input_shape=(1, 1, 8)).rf("output")
    assert r.status == "exact" and [r.pixels((i,)) for i in range(4)] == [([i],) for i in range(4)]
    # 2-D: for odd rows the up branch sees nothing, so its columns must not count either; the
    # per-position form unions the two branches element by element: every unit sees its own pixel
    r = rfscope.analyze(EmptyUnits(2), input_shape=(1, 1, 8, 8)).rf("output")
    assert r.status == "exact"
    assert [r.pixels((i, j)) for i, j in [(0, 0), (1, 3), (6, 2)]] == [([0], [0]), ([1], [3]), ([6], [2])]


def test_maxpool_with_indices_keeps_rf():
    """MaxPool2d(return_indices=True) followed by [0]: same RF as a plain 2x2/2 pool."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.pool = nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            y, _idx = self.pool(self.conv(x))
            return y

    r = rfscope.analyze(M(), input_shape=(1, 1, 16, 16)).rf("output")
    assert r.status == "exact" and r.size == (4, 4) and r.stride == (2, 2)


def test_narrow_and_select_crop_by_hand():
    """narrow(dim=3, start=2) moves unit 0 two units right: P' = P - 2j; select fixes the unit."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)  # r=3, j=2, P=1

        def forward(self, x):
            y = self.conv(x).narrow(3, 2, 4)
            return y, y.select(2, 1)

    rep = rfscope.analyze(M(), input_shape=(1, 1, 16, 16))
    names = [r.name for r in rep.records.values() if r.op == "call_method"]
    narrowed = rep.rf(names[0])
    assert narrowed.padding == (1, 1 - 2 * 2) and narrowed.size == (3, 3)
    selected = rep.rf(names[1])  # row 1: every unit sees H pixels [2*1-1, 2*1-1+2] = [1, 3]
    assert selected.window((5, 0)) == ((1, 3), (3, 5))  # W unit 0 after the crop sees [-P', -P'+2]
    assert selected.window((0, 1)) == ((1, 3), (5, 7))


def test_global_pool_after_se_has_no_local_rf():
    """A squeeze-excitation gate keeps a local RF; global pooling after it leaves none."""

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Conv2d(4, 4, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            y = self.conv(x)
            g = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
            return self.pool(y * g)

    rep = rfscope.analyze(SE(), input_shape=(1, 3, 16, 16))
    gated = [r.name for r in rep.records.values() if r.target == "operator.mul"][0]
    assert rep.rf(gated).status == "global" and rep.rf(gated, local=True).size == (3, 3)
    pooled = rep.rf("pool")
    assert pooled.status == "global" and pooled.local is None


def test_cross_attention_to_a_coarser_map_sees_every_key_and_its_query():
    """Queries from a stride-2 map attend to keys/values from a stride-4 map: every output
    position sees every key position and its own query (not a misaligned merge).  The keys' 3x3
    windows at stride 4 miss every pixel ``4i + 2`` and the last two, so the result is not global: a token sees
    those pixels only where its own query's window holds them (hand-derived below)."""

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.fine = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.coarse = nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            q = self.fine(x).flatten(2).transpose(1, 2)
            kv = self.coarse(x).flatten(2).transpose(1, 2)
            return self.attn(q, kv, kv, need_weights=False)[0]

    def sdpa(x, convs):
        q = convs[0](x).flatten(2).transpose(1, 2)
        kv = convs[1](x).flatten(2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, kv, kv)

    class CrossF(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                        nn.Conv2d(3, 8, 3, stride=4, padding=1)])

        def forward(self, x):
            return sdpa(x, self.convs)

    def seen(t: int) -> set[tuple[int, int]]:
        """Pixels output token ``t`` (query (i, j) of the 16x16 map) sees, by hand."""
        i, j = divmod(t, 16)
        keys = {x for k in range(8) for x in range(4 * k - 1, 4 * k + 2) if 0 <= x < 32}  # 8 keys per axis
        own_r = {x for x in range(2 * i - 1, 2 * i + 2) if 0 <= x < 32}
        own_c = {x for x in range(2 * j - 1, 2 * j + 2) if 0 <= x < 32}
        return {(a, b) for a in keys for b in keys} | {(a, b) for a in own_r for b in own_c}

    for net in (Cross(), CrossF()):
        r = rfscope.analyze(net, input_shape=(1, 3, 32, 32)).rf("output")
        assert r.status == "exact" and r.table is not None, r.reason
        for t in (0, 1, 17, 255):
            got = {(a, b) for (ra, rb) in r.table.boxes((0, t, 0)) for a in range(ra[0], ra[1] + 1)
                   for b in range(rb[0], rb[1] + 1)}
            assert got == seen(t), t


def test_adaptive_pool_subclass_gets_the_same_rf() -> None:
    """A subclass of AdaptiveAvgPool2d that keeps forward is the same op: conv 3 on 12 -> 10, pooled to 2x2
    windows of 5 -> 3 + 4 = 7 (hand-derived); it used to pass the conv's 3x3 through unchanged."""
    class Pool(nn.AdaptiveAvgPool2d):
        pass

    for pool in (nn.AdaptiveAvgPool2d((2, 2)), Pool((2, 2))):
        r = rfscope.analyze(nn.Sequential(nn.Conv2d(3, 4, 3), pool), (1, 3, 12, 12)).rf("1")
        assert (r.status, r.size) == ("exact", (7, 7))
