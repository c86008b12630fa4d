"""The same idea written by different model zoos must come out the same (issue 12, acceptance).

Class tokens, window attention (plain and shifted) and patch unfolding are each built from small
configs in several libraries, written by hand in each of them:

- **class tokens + patch embedding**: Hugging Face ``ViTModel`` and ``DeiTModel`` (class and
  distillation token), torchvision ``VisionTransformer``, timm ``vit_tiny_patch16_224`` and MONAI
  ``UNETR``'s ViT (patch tokens, no class token; ``einsum`` attention);
- **window attention**: Hugging Face ``SwinModel`` (tokens ``(B, H*W, C)``), torchvision
  ``SwinTransformer`` (``shifted_window_attention``, NHWC), timm ``swin_tiny_patch4_window7_224``
  (NHWC) and MONAI ``SwinUNETR``'s ``swinViT`` (NHWC blocks, patch 2);
- **patch unfolding**: Hugging Face ``MobileViTModel`` and timm ``mobilevit_xxs``.

For each model: (a) no ``unknown`` node; (b) every listed node agrees with the gradient oracle
(``tests/masks.py``, ``check_node``); (c) the numbers are the same across libraries, element by
element, and equal to an expectation written out here (token ``prefix + grid * i + j`` sees the
patch ``(p i .. p i + p - 1, p j .. p j + p - 1)``; a window-attention output sees its window),
which is itself checked against the oracle, so the test does not just repeat rfscope.

Where a library's model disagrees (with the oracle or with the other libraries) the check is a
strict xfail whose reason says what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn
from masks import bbox, cached_on_one_thread, check_node, claimed, node_dims, periodic_unit, seen
from oracle import Oracle

import rfscope

SIZE = 64


def _xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# -- the models -----------------------------------------------------------------------------------
def _hf_vit() -> nn.Module:
    t = pytest.importorskip("transformers")
    return t.ViTModel(t.ViTConfig(image_size=64, patch_size=16, num_hidden_layers=1, hidden_size=32,
                                  num_attention_heads=2, intermediate_size=64))


def _hf_deit() -> nn.Module:
    t = pytest.importorskip("transformers")
    return t.DeiTModel(t.DeiTConfig(image_size=64, patch_size=16, num_hidden_layers=1, hidden_size=32,
                                    num_attention_heads=2, intermediate_size=64))


def _tv_vit() -> nn.Module:
    tv = pytest.importorskip("torchvision")
    return tv.models.VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32,
                                       mlp_dim=64)


def _timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=1)


def _monai_unetr() -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    return nets.UNETR(in_channels=3, out_channels=2, img_size=(64, 64), spatial_dims=2, feature_size=8,
                      hidden_size=32, mlp_dim=64, num_heads=2)


def _hf_swin(size: int = 64) -> nn.Module:
    t = pytest.importorskip("transformers")
    return t.SwinModel(t.SwinConfig(image_size=size, patch_size=4, window_size=4, depths=[2, 1], num_heads=[1, 2],
                                    embed_dim=16))


def _tv_swin(size: int = 64) -> nn.Module:
    pytest.importorskip("torchvision")
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[1, 2], window_size=[4, 4])


def _timm_swin(size: int = 64) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size, window_size=4,
                             depths=(2, 1), num_heads=(1, 2), embed_dim=16)


def _monai_swinunetr() -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    return nets.SwinUNETR(in_channels=3, out_channels=2, feature_size=12, spatial_dims=2, depths=(2, 1, 1, 1),
                          num_heads=(1, 1, 1, 1), window_size=4, patch_size=2)


def _hf_mobilevit() -> nn.Module:
    t = pytest.importorskip("transformers")
    # mobilevit-xx-small's widths (the same layers as timm's mobilevit_xxs)
    return t.MobileViTModel(t.MobileViTConfig(image_size=64, hidden_sizes=[64, 80, 96],
                                              neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0))


def _timm_mobilevit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("mobilevit_xxs", pretrained=False)


#: key -> (builder, library)
MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "hf_vit": (_hf_vit, "transformers"),
    "hf_deit": (_hf_deit, "transformers"),
    "tv_vit": (_tv_vit, "torchvision"),
    "timm_vit": (_timm_vit, "timm"),
    "monai_unetr": (_monai_unetr, "monai"),
    "hf_swin": (_hf_swin, "transformers"),
    "tv_swin": (_tv_swin, "torchvision"),
    "timm_swin": (_timm_swin, "timm"),
    "monai_swinunetr": (_monai_swinunetr, "monai"),
    "hf_swin_56": (lambda: _hf_swin(56), "transformers"),
    "tv_swin_56": (lambda: _tv_swin(56), "torchvision"),
    "timm_swin_56": (lambda: _timm_swin(56), "timm"),
    "hf_mobilevit": (_hf_mobilevit, "transformers"),
    "timm_mobilevit": (_timm_mobilevit, "timm"),
}

# -- class tokens: key -> (tokens node, first block, number of prefix tokens) ------------------------------
VIT: dict[str, tuple[str, str, int]] = {
    "hf_vit": ("embeddings", "layers.0", 1),
    "hf_deit": ("embeddings", "layers.0", 2),  # class + distillation token
    "tv_vit": ("encoder.dropout", "encoder.layers.encoder_layer_0", 1),
    "timm_vit": ("pos_drop", "blocks.0", 1),
    "monai_unetr": ("vit.patch_embedding", "vit.blocks.0", 0),
}
VIT_PATCH, VIT_GRID = 16, 4

# -- window attention: key -> (patch embed, plain block, shifted block, layouts, patch, window, grid) -------
#: layout of a node's output: "tokens" (B, H*W, C), "nhwc" (B, H, W, C), "nchw" (B, C, H, W)
SWIN: dict[str, tuple[str, str, str, tuple[str, str], int, int, int]] = {
    "hf_swin": ("embeddings", "encoder.layers.0.blocks.0", "encoder.layers.0.blocks.1", ("tokens", "tokens"),
                4, 4, 16),
    "tv_swin": ("features.0", "features.1.0", "features.1.1", ("nhwc", "nhwc"), 4, 4, 16),
    "timm_swin": ("patch_embed", "layers.0.blocks.0", "layers.0.blocks.1", ("nhwc", "nhwc"), 4, 4, 16),
    "monai_swinunetr": ("swinViT.patch_embed", "swinViT.layers1.0.blocks.0", "swinViT.layers1.0.blocks.1",
                        ("nchw", "nhwc"), 2, 4, 32),
    # 56x56: 14x14 tokens, padded to 16x16 for the windows (each library pads by hand); only padding wraps
    "hf_swin_56": ("embeddings", "encoder.layers.0.blocks.0", "encoder.layers.0.blocks.1", ("tokens", "tokens"),
                   4, 4, 14),
    "tv_swin_56": ("features.0", "features.1.0", "features.1.1", ("nhwc", "nhwc"), 4, 4, 14),
    "timm_swin_56": ("patch_embed", "layers.0.blocks.0", "layers.0.blocks.1", ("nhwc", "nhwc"), 4, 4, 14),
}
#: one geometry each: patch 4, window 4, shift 2; 16x16 tokens, and 14x14 tokens padded to 16x16
SWIN_TRIOS = {"64": ("hf_swin", "tv_swin", "timm_swin"), "56": ("hf_swin_56", "tv_swin_56", "timm_swin_56")}

# -- patch unfolding: key -> (feature map before unfolding, unfolded patches (B*P, N, C), block) -----------
MOBILEVIT: dict[str, tuple[str, str, str]] = {
    "hf_mobilevit": ("encoder.layer.2.conv_1x1", "encoder.layer.2.transformer.layer.0.layernorm_before",
                     "encoder.layer.2"),
    "timm_mobilevit": ("stages.2.1.conv_1x1", "stages.2.1.transformer.0.norm1", "stages.2"),
}
MV_PATCH, MV_GRID = 2, 8  # 2x2 patches of the 8x8 map

#: (model, node): every node checked against the oracle; the third entry: why it is an xfail
NODES: list[tuple[str, str] | tuple[str, str, str]] = [
    *[(k, n) for k, (tok, blk, _) in VIT.items() for n in (tok, blk)],
    *[(k, n) for k, (emb, b0, _b1, *_r) in SWIN.items() for n in (emb, b0)],
    *[(k, b1) for k, (_e, _b0, b1, *_r) in SWIN.items()],
    *[(k, n) for k, nodes in MOBILEVIT.items() for n in nodes],
]


class Case:
    """A model, its report and the oracle capturing every listed node."""

    def __init__(self, key: str) -> None:
        torch.manual_seed(0)
        self.model = MODELS[key][0]().eval()
        side = _side(key)
        self.shape = (1, 3, side, side)
        self.rep = rfscope.analyze(self.model, input_shape=self.shape)
        self.key = key
        self._oracle: Oracle | None = None

    @property
    def oracle(self) -> Oracle:
        if self._oracle is None:
            self._oracle = Oracle(self.model, self.shape, module=[p[1] for p in NODES if p[0] == self.key])
        return self._oracle


@pytest.fixture(scope="module")
def cases() -> Iterator[Callable[[str], Case]]:
    """Each model built, analysed and run by the oracle once (masks.cached_on_one_thread)."""
    yield from cached_on_one_thread(Case)


# -- helpers ----------------------------------------------------------------------------------------
def _side(key: str) -> int:
    """The image side of a model: patch * tokens for the Swin models, else SIZE."""
    return SWIN[key][4] * SWIN[key][6] if key in SWIN else SIZE


def _index(layout: str, i: int, j: int, grid: int, ch: int = 0) -> tuple[int, ...]:
    if layout == "tokens":
        return (0, grid * i + j, ch)
    if layout == "nhwc":
        return (0, i, j, ch)
    return (0, ch, i, j)


def _claimed(rep: rfscope.Report, name: str, idx: Sequence[int], size: int = SIZE) -> torch.Tensor:
    """rfscope's (H, W) mask of element ``idx`` of node ``name``, clipped to the image (a periodic
    RF: the element's unit, whatever the layout of its dims)."""
    r = rep.rf(name)
    assert r.status == "exact", (name, r)
    if r.table is not None:
        return claimed(r, idx, (size, size))
    unit, _ = periodic_unit(node_dims(rep, name), r, idx)
    return claimed(r, idx, (size, size), unit)


def _magnitude(o: Oracle, y: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
    """Oracle: |d y[idx] / d input| summed over the input channels, (H, W)."""
    (g,) = torch.autograd.grad(y[tuple(idx)], o.x, retain_graph=True)
    return g[0].abs().sum(0)


def _box(lo: tuple[int, int], hi: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1] = True
    return m


def _axis(members: Sequence[int], side: int, size: int) -> torch.Tensor:
    """Pixels of the grid cells ``members`` (each ``side`` pixels wide) along one axis of ``size`` pixels
    (a padding cell past the image has none)."""
    v = torch.zeros(size, dtype=torch.bool)
    for t in members:
        v[side * t:side * t + side] = True
    return v


def _window_axis(i: int, patch: int, ws: int, size: int) -> torch.Tensor:
    """Plain window attention, one axis: token i sees the tokens of its window, ``patch`` px each."""
    return _axis(range(ws * (i // ws), ws * (i // ws) + ws), patch, size)


def _shifted_axis(i: int, patch: int, ws: int, grid: int, masked: bool) -> torch.Tensor:
    """Shifted window attention (shift ws // 2) after a plain block, one axis of ``grid`` tokens, padded
    (bottom / right) to ``n``, a multiple of the window.

    ``torch.roll(x, -s)`` puts token t at rolled position ``(t - s) % n``; attention runs within each
    window of the rolled grid; the last window holds the wrapped tokens, and the attention mask splits it
    into the rolled slices ``[n - ws, n - s)`` and ``[n - s, n)``.  ``masked``: only tokens of the same
    slice (the mask as -inf); otherwise every token of the rolled window (the additive -100 leaves a weight
    of ~exp(-100), which the gradient sees).  Each real token seen brings its plain window; padding
    tokens bring nothing."""
    s, n = ws // 2, -(-grid // ws) * ws

    def region(q: int) -> int:
        return 0 if q < n - ws else (1 if q < n - s else 2)

    q = (i - s) % n
    seen_tokens = [t for t in range(grid) if ((t - s) % n) // ws == q // ws
                   and (not masked or region((t - s) % n) == region(q))]
    v = torch.zeros(patch * grid, dtype=torch.bool)
    for t in seen_tokens:
        v |= _window_axis(t, patch, ws, patch * grid)
    return v


def _outer(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return rows[:, None] & cols[None, :]


def _probe(grid: int) -> list[tuple[int, int]]:
    """Grid positions probed with the oracle: corners, borders (the wrapped windows) and the middle."""
    g = grid
    return [(0, 0), (0, 1), (1, 2), (2, 2), (3, 5), (g // 2 - 1, g // 2), (g // 2, 1), (g - 3, g - 2),
            (g - 2, g - 1), (g - 1, 0), (g - 1, g - 1), (5, g - 2)]


# -- (a) no unknown node ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", MODELS)
def test_no_unknown_node(key: str, cases: Callable[[str], Case]) -> None:
    rep = cases(key).rep
    assert [n for n, r in rep.records.items() if r.rf is not None and r.rf.status == "unknown"] == []


def test_monai_swinunetr_encoder_has_no_unknown_node(cases: Callable[[str], Case]) -> None:
    """No unknown node in SwinUNETR's Swin encoder (its decoder's transposed convs read per-position tables:
    see test_conv_transpose_on_a_table_matches_the_oracle)."""
    rep = cases("monai_swinunetr").rep
    unknown = [n for n, r in rep.records.items() if r.rf is not None and r.rf.status == "unknown"]
    mods = {str(getattr(rep.records[n], "module", "")) for n in unknown}
    assert not any(m.startswith("swinViT") for m in mods), sorted(mods)[:5]


@pytest.mark.parametrize("k,s,p,op,d", [(2, 2, 0, 0, 1), (3, 2, 1, 1, 1), (1, 2, 0, 1, 1), (3, 1, 1, 0, 2)],
                         ids=["k2s2", "k3s2p1op1", "k1s2-holes", "k3d2"])
def test_conv_transpose_on_a_table_matches_the_oracle(k: int, s: int, p: int, op: int, d: int) -> None:
    """SwinUNETR's decoder in small: a transposed conv reading a per-position table (made by a roll
    along H); every output element's pixels against the oracle (kernel < stride: some see nothing)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2, stride=2)
            self.up = nn.ConvTranspose2d(2, 1, k, stride=s, padding=p, output_padding=op, dilation=d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(torch.roll(self.conv(x), 1, dims=2))

    model = Net().eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8))
    r = rep.rf("up")
    assert r.table is not None, r
    o = Oracle(model, (1, 1, 8, 8), module="up")
    y = o.outs["up"]
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            want = seen(o, y, (0, 0, i, j), None)
            assert torch.equal(claimed(r, (0, 0, i, j), (8, 8)), want), ((i, j), r.table.boxes((0, 0, i, j)))
    if (k, s) == (2, 2):  # written out: output (0, 0) reads conv unit (0, 0), which the roll took from unit (3, 0)
        assert r.window((0, 0, 0, 0)) == ((6, 7), (0, 1))


# -- (b) every node against the oracle ----------------------------------------------------------------------
def _node_params() -> list[Any]:
    out = []
    for key, node, *why in NODES:
        out.append(pytest.param(key, node, marks=[_xfail(why[0])] if why else [], id=f"{key}:{node}"))
    return out


@pytest.mark.parametrize("key,node", _node_params())
def test_node_against_the_oracle(key: str, node: str, cases: Callable[[str], Case]) -> None:
    c = cases(key)
    check_node(c.rep, c.oracle, node, n=6)


# -- (c) class tokens and patch tokens: the same numbers in every library -----------------------------------
def _vit_expected(prefix: int, t: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Token t of a ViT before its first attention: a class / distillation token (t < prefix) sees nothing,
    token prefix + grid * i + j sees exactly patch (i, j)."""
    if t < prefix:
        return None
    i, j = divmod(t - prefix, VIT_GRID)
    p = VIT_PATCH
    return ((p * i, p * i + p - 1), (p * j, p * j + p - 1))


@pytest.mark.parametrize("key", list(VIT))
def test_class_and_patch_tokens_by_hand(key: str, cases: Callable[[str], Case]) -> None:
    """Every token, two channels: rfscope's window is the expectation, and so is the oracle's mask."""
    c = cases(key)
    node, _, prefix = VIT[key]
    r, o = c.rep.rf(node), c.oracle
    y = o.outs[node]
    assert tuple(y.shape[:2]) == (1, prefix + VIT_GRID ** 2)
    for t in range(y.shape[1]):
        want = _vit_expected(prefix, t)
        for ch in (0, 7):
            idx = (0, t, ch)
            got = r.window(idx) if r.table is not None else r.window(divmod(t - prefix, VIT_GRID))
            assert got == want, (key, t, ch, got, want)
        m = seen(o, y, (0, t, 7))
        if want is None:
            assert not bool(m.any()), (key, t, bbox(m))
        else:
            assert torch.equal(m, _box((want[0][0], want[1][0]), (want[0][1], want[1][1]))), (key, t, bbox(m))


def test_class_and_patch_tokens_same_across_libraries(cases: Callable[[str], Case]) -> None:
    """Per patch token (i, j), and for the class token, the same window in all five models; after the first
    block every token is ``global``, the patch tokens with their 16x16 patch as local RF, the class token
    with none."""
    seen_by: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    for key, (node, block, prefix) in VIT.items():
        rep = cases(key).rep
        r, rb, rl = rep.rf(node), rep.rf(block), rep.rf(block, local=True)
        cls = [r.window((0, t, 3)) for t in range(prefix)]
        assert all(w is None for w in cls), (key, cls)
        tokens = [r.window((0, prefix + t, 3)) if r.table is not None else r.window(divmod(t, VIT_GRID))
                  for t in range(VIT_GRID ** 2)]
        seen_by[key] = tokens
        assert rb.status == "global", (key, rb)
        local = [rl.window((0, prefix + t, 3)) if rl.table is not None else rl.window(divmod(t, VIT_GRID))
                 for t in range(VIT_GRID ** 2)]
        cls_local = [rl.window((0, t, 3)) if rl.table is not None else "no table" for t in range(prefix)]
        after[key] = [local, cls_local == [None] * prefix]
    ref = [_vit_expected(0, t) for t in range(VIT_GRID ** 2)]
    assert {k: v for k, v in seen_by.items() if v != ref} == {}
    assert {k: v for k, v in after.items() if v != [ref, True]} == {}


# -- (c) window attention: per token, the same window in every library -----------------------------------
def _swin_masks(key: str, which: int, cases: Callable[[str], Case]) -> torch.Tensor:
    """rfscope's (grid * grid, H, W) masks of node ``which`` (0 patch embed, 1 plain, 2 shifted block)."""
    c = cases(key)
    spec = SWIN[key]
    node, layout, grid = spec[which], spec[3][0 if which == 0 else 1], spec[6]
    return torch.stack([_claimed(c.rep, node, _index(layout, i, j, grid, 1), _side(key)) for i in range(grid)
                        for j in range(grid)])


def _swin_expected(key: str, which: int, masked: bool = False) -> torch.Tensor:
    _e, _b0, _b1, _l, patch, ws, grid = SWIN[key]
    side = patch * grid
    out = []
    for i in range(grid):
        for j in range(grid):
            if which == 0:
                out.append(_outer(_axis([i], patch, side), _axis([j], patch, side)))
            elif which == 1:
                out.append(_outer(_window_axis(i, patch, ws, side), _window_axis(j, patch, ws, side)))
            else:
                out.append(_outer(_shifted_axis(i, patch, ws, grid, masked), _shifted_axis(j, patch, ws, grid, masked)))
    return torch.stack(out)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["patch_embed", "window", "shifted"])
@pytest.mark.parametrize("key", list(SWIN))
def test_swin_expectation_against_the_oracle(key: str, which: int, cases: Callable[[str], Case]) -> None:
    """The expectation written out above (patch, window, rolled window) is what the oracle measures,
    on the corner, border and middle tokens of every library's model."""
    c = cases(key)
    spec = SWIN[key]
    node, layout, grid = spec[which], spec[3][0 if which == 0 else 1], spec[6]
    o = c.oracle
    y = o.outs[node]
    want = _swin_expected(key, which)
    for i, j in _probe(grid):
        m = seen(o, y, _index(layout, i, j, grid, 1))
        assert torch.equal(m, want[grid * i + j]), (key, node, (i, j), bbox(m), bbox(want[grid * i + j]))


@pytest.mark.parametrize("which", [0, 1], ids=["patch_embed", "window"])
@pytest.mark.parametrize("key", list(SWIN))
def test_swin_windows_by_hand(key: str, which: int, cases: Callable[[str], Case]) -> None:
    """Every token of the patch embedding and of the plain window block: rfscope = the expectation."""
    got, want = _swin_masks(key, which, cases), _swin_expected(key, which)
    bad = [t for t in range(len(got)) if not torch.equal(got[t], want[t])]
    assert bad == [], (key, which, [(divmod(t, SWIN[key][6]), bbox(got[t]), bbox(want[t])) for t in bad[:4]])


@pytest.mark.parametrize("key", list(SWIN))
def test_swin_shifted_windows_by_hand(key: str, cases: Callable[[str], Case]) -> None:
    """Every token of the shifted block: rfscope = the rolled window (the oracle's support)."""
    got, want = _swin_masks(key, 2, cases), _swin_expected(key, 2)
    bad = [t for t in range(len(got)) if not torch.equal(got[t], want[t])]
    assert bad == [], (key, len(bad), [(divmod(t, SWIN[key][6]), bbox(got[t]), bbox(want[t])) for t in bad[:4]])


def test_tv_swin_wrapped_pieces_weigh_exp_minus_100(cases: Callable[[str], Case]) -> None:
    """The rolled window's wrapped pieces are in the exact RF (test_swin_shifted_windows_by_hand), but
    the -100 mask weighs them ~exp(-100): in the oracle's gradient they sit below 1e-30 of the largest,
    and what is left above is the mask region alone (what the effective RF, ``rfscope.probe``, shows)."""
    got, want = _swin_masks("tv_swin", 2, cases), _swin_expected("tv_swin", 2)
    region = _swin_expected("tv_swin", 2, masked=True)
    assert all(torch.equal(got[t], want[t]) for t in range(len(got)))
    assert any(not torch.equal(want[t], region[t]) for t in range(len(want)))  # some window wrapped
    c = cases("tv_swin")
    node, grid = SWIN["tv_swin"][2], SWIN["tv_swin"][6]
    y = c.oracle.outs[node]
    for i, j in _probe(grid):
        mag = _magnitude(c.oracle, y, _index("nhwc", i, j, grid, 1))
        assert torch.equal(mag != 0, want[grid * i + j]), (i, j)
        assert torch.equal(mag > 1e-30 * mag.max(), region[grid * i + j]), (i, j)


@pytest.mark.parametrize("which", [
    pytest.param(0, id="patch_embed"), pytest.param(1, id="window"),
    pytest.param(2, id="shifted")])
@pytest.mark.parametrize("trio", [pytest.param("64", id="64"), pytest.param("56", id="56_padded")])
def test_swin_same_windows_across_libraries(trio: str, which: int, cases: Callable[[str], Case]) -> None:
    """HF, torchvision and timm Swin (patch 4, window 4, shift 2): per token, the same pixels; at 64x64
    (16x16 tokens) and at 56x56 (14x14 tokens padded to 16x16: only padding wraps, and all three agree)."""
    keys = SWIN_TRIOS[trio]
    masks = {k: _swin_masks(k, which, cases) for k in keys}
    ref, grid = masks[keys[2]], SWIN[keys[2]][6]
    diff = {k: [divmod(t, grid) for t in range(len(m)) if not torch.equal(m[t], ref[t])] for k, m in masks.items()}
    assert {k: v[:8] for k, v in diff.items() if v} == {}


# -- (c) MobileViT patch unfolding --------------------------------------------------------------------------
def _unfolded_position(p: int, n: int) -> tuple[int, int]:
    """Element (p, n) of the unfolded patches (B * P, N, C): pixel p of 2x2 patch n, i.e. this position of
    the 8x8 feature map before unfolding (both libraries unfold the same way)."""
    (pi, pj), (ni, nj) = divmod(p, MV_PATCH), divmod(n, MV_GRID // MV_PATCH)
    return MV_PATCH * ni + pi, MV_PATCH * nj + pj


@pytest.mark.parametrize("key", list(MOBILEVIT))
def test_mobilevit_unfolding_by_hand(key: str, cases: Callable[[str], Case]) -> None:
    """Each unfolded element sees what the feature map's position it came from sees: rfscope's table against
    the periodic RF of the map (all 64 elements), and the oracle against the oracle (probes)."""
    c = cases(key)
    fmap, unf, _ = MOBILEVIT[key]
    r, rf_map, o = c.rep.rf(unf), c.rep.rf(fmap), c.oracle
    assert r.table is not None and rf_map.table is None
    y, ym = o.outs[unf], o.outs[fmap]
    assert tuple(y.shape[:2]) == (MV_PATCH ** 2, (MV_GRID // MV_PATCH) ** 2)
    for p in range(MV_PATCH ** 2):
        for n in range(y.shape[1]):
            u = _unfolded_position(p, n)
            want = claimed(rf_map, (0, 0, *u), (SIZE, SIZE), u)
            assert torch.equal(claimed(r, (p, n, 2), (SIZE, SIZE)), want), (key, p, n, u)
    for p, n in [(0, 0), (3, 5), (1, 15), (2, 9), (3, 15), (1, 4)]:
        u = _unfolded_position(p, n)
        assert torch.equal(seen(o, y, (p, n, 2)), seen(o, ym, (0, 0, *u), 1)), (key, p, n, u)


def test_mobilevit_same_across_libraries(cases: Callable[[str], Case]) -> None:
    """HF MobileViTModel and timm mobilevit_xxs: the same periodic RF before unfolding, the same table of the
    unfolded patches element by element, and a ``global`` block output."""
    got = {}
    for key, (fmap, unf, block) in MOBILEVIT.items():
        rep = cases(key).rep
        r = rep.rf(unf)
        rm = rep.rf(fmap)
        got[key] = (rm.size, rm.stride, rm.padding,
                    [r.window((p, n, 0)) for p in range(MV_PATCH ** 2) for n in range((MV_GRID // MV_PATCH) ** 2)],
                    rep.rf(block).status)
    assert got["hf_mobilevit"] == got["timm_mobilevit"]
    assert got["timm_mobilevit"][4] == "global"
