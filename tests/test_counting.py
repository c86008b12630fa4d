"""Parameter / MAC counts, conv anatomy and separable blocks against published and hand-derived numbers."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rfscope

tv = pytest.importorskip("torchvision")


def _meta(builder, **kw):
    """Build a torchvision model on meta: the counts need no real weights (and no init cost)."""
    with torch.device("meta"):
        return builder(weights=None, **kw)


# -- published totals -----------------------------------------------------------
def test_resnet50_published_params_and_macs():
    r = rfscope.analyze(_meta(tv.models.resnet50), input_shape=(1, 3, 224, 224))
    s = r.summary
    assert s.params_total == 25_557_032  # torchvision model card
    assert s.params_trainable == s.params_total and s.params_frozen == 0
    assert s.params_unused == 0
    assert 4.05e9 < s.macs < 4.15e9  # "4.1 GMACs" (He et al. 2016: 3.8 GFLOPs counting conv+fc as MACs)
    assert s.macs_unknown == ()
    # every parameter counted exactly once over the nodes
    assert sum(r.counts.node(x).params or 0 for x in r.records) == 25_557_032
    # BatchNorm buffers: running mean + var (C each) + num_batches_tracked, over 53 BNs; channels:
    # stem 64, per bottleneck w + w + 4w, per stage a 4w downsample BN (w = 64, 128, 256, 512; 3, 4, 6, 3 blocks)
    channels = 64 + sum(n * 6 * w + 4 * w for w, n in ((64, 3), (128, 4), (256, 6), (512, 3)))
    assert s.buffers == 2 * channels + 53
    assert r.module_params("fc").total == 2048 * 1000 + 1000
    assert r.module_params("").total == 25_557_032


def test_mobilenet_v2_published_params_macs_and_separable_blocks():
    r = rfscope.analyze(_meta(tv.models.mobilenet_v2), input_shape=(1, 3, 224, 224))
    assert r.summary.params_total == 3_504_872
    assert 0.29e9 < r.summary.macs < 0.31e9  # Sandler et al. 2018: 300M multiply-adds
    blocks = r.separable_blocks
    assert len(blocks) == 17  # one dw 3x3 -> BN -> ReLU6 -> pw 1x1 per inverted residual block
    b = blocks[0]
    assert (b.kernel, b.c_in, b.c_out, b.multiplier) == ((3, 3), 32, 16, 1)
    assert b.params == 3 * 3 * 32 + 32 * 16 == 800
    assert b.standard_params == 3 * 3 * 32 * 16
    assert b.params_ratio == pytest.approx(1 / 16 + 1 / 9)
    assert b.macs == 112 * 112 * 32 * 9 + 112 * 112 * 16 * 32
    assert b.standard_macs == 112 * 112 * 16 * 32 * 9
    for blk in blocks:
        assert blk.params_ratio == pytest.approx(blk.formula_ratio)
        assert blk.params_ratio == pytest.approx(1 / blk.c_out + 1 / 9)
    assert [r.records[n].module for n in b.via] == ["features.1.conv.0.1", "features.1.conv.0.2"]


@pytest.mark.parametrize("name,params,gmacs,blocks", [
    # torchvision model docs ("GFLOPS" there are multiply-adds); blocks: MBConv dw -> (BN, act, SE) -> pw
    ("efficientnet_b0", 5_288_548, 0.39, 16),
    ("mobilenet_v3_small", 2_542_856, 0.06, 11),
    ("convnext_tiny", 28_589_128, 4.46, 0),  # depthwise 7x7 then LayerNorm/Linear: no 1x1 conv
    ("vit_b_16", 86_567_656, 17.56, 0),
])
def test_torchvision_model_docs(name, params, gmacs, blocks):
    r = rfscope.analyze(_meta(getattr(tv.models, name)), input_shape=(1, 3, 224, 224))
    assert r.summary.params_total == params
    assert round(r.summary.macs / 1e9, 2) == gmacs
    assert len(r.separable_blocks) == blocks


# -- identity: tied weights, modules called twice ----------------------------------
class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb_proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = self.emb_proj.weight  # tied
        self.block = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(8, 2)

    def forward(self, x):
        x = self.block(x)
        x = self.bn(self.block(x))  # the same module twice
        x = x.transpose(1, 2)
        return self.head(self.frozen(self.emb_proj(x)))


def test_tied_weights_and_module_called_twice_counted_once():
    r = rfscope.analyze(_Tied(), input_shape=(1, 8, 5))
    s = r.summary
    conv = 8 * 8 * 3 + 8
    lin = 8 * 8 + 8
    total = conv + 2 * 8 + lin + lin + (8 * 2 + 2)  # head adds nothing: its weight is emb_proj's
    assert s.params_total == total
    assert s.params_frozen == lin
    assert s.params_trainable == total - lin
    assert s.params_unused == 8 * 2 + 2
    assert s.buffers == 8 + 8 + 1
    block0, block1 = r.records[r.node_name("block")], r.records[r.node_name("block@1")]
    c0, c1 = r.counts.node(block0.name), r.counts.node(block1.name)
    assert c0.params == conv and not c0.shared
    assert c1.params == 0 and c1.shared == {"block.weight": block0.name, "block.bias": block0.name}
    head = r.counts.node(r.node_name("head"))
    assert head.params == 0 and head.shared == {"emb_proj.weight": r.node_name("emb_proj")}
    # MACs are per call: the conv runs twice
    assert block0.macs == block1.macs == 5 * 8 * 8 * 3
    assert s.macs == 2 * 5 * 8 * 8 * 3 + 3 * 5 * 8 * 8
    d = json.loads(r.to_json())
    node = {n["name"]: n for n in d["nodes"]}
    assert node[block1.name]["shared"] == {"block.weight": block0.name, "block.bias": block0.name}
    assert node[block0.name]["params"] == conv and node[block0.name]["macs"] == 5 * 8 * 8 * 3
    assert d["summary"]["params_total"] == total and d["summary"]["params_frozen"] == lin
    assert d["modules"]["block"]["counts"] == {"params_total": conv, "params_trainable": conv, "params_frozen": 0,
                                               "buffers": 0, "macs": 2 * 5 * 8 * 8 * 3}
    assert set(d["summary"]) >= {"params_total", "params_trainable", "params_frozen", "buffers", "macs"}
    table = r.table()
    assert "params" in table.splitlines()[0] and "MACs" in table.splitlines()[0]
    assert "shared" in table
    assert r.module_params("block").total == conv and r.module_params("frozen").frozen == lin
    assert r.module_params("block").macs == 2 * 5 * 8 * 8 * 3


class _Functional(nn.Module):
    """Parameters held outside any Conv module; the conv weight is standardised first."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3))
        self.b1 = nn.Parameter(torch.zeros(16))
        self.w2 = nn.Parameter(torch.randn(4, 16))
        self.register_buffer("scale", torch.ones(1, 16, 1, 1))

    def forward(self, x):
        w = (self.w1 - self.w1.mean()) / (self.w1.std() + 1e-5)
        x = F.relu(F.conv2d(x, w, self.b1, stride=2, padding=1)) * self.scale
        x = x.mean((2, 3))
        return F.linear(x, self.w2)


def test_functional_only_model():
    r = rfscope.analyze(_Functional(), input_shape=(1, 3, 32, 32))
    s = r.summary
    assert s.params_total == 16 * 27 + 16 + 64 and s.buffers == 16 and s.params_unused == 0
    conv = next(x for x in r.records.values() if x.target_obj is F.conv2d)
    assert r.counts.node(conv.name).params == 16 * 27 + 16  # w1 counted at the conv, through the standardisation
    assert conv.macs == 16 * 16 * 16 * 27
    assert conv.conv_kind == ["standard"]
    lin = next(x for x in r.records.values() if x.target_obj is F.linear)
    assert r.counts.node(lin.name).params == 64 and lin.macs == 64


# -- MACs by hand ----------------------------------------------------------------
def _macs(model, *inputs):
    r = rfscope.analyze(model, example_inputs=inputs)
    return [x.macs for x in r.records.values() if x.macs is not None]


def test_hand_counted_macs():
    x = torch.randn(1, 4, 8, 8)
    assert _macs(nn.Conv2d(4, 6, 3, padding=1, groups=2), x) == [6 * 8 * 8 * 2 * 9]
    assert _macs(nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1), x) == [4 * 8 * 8 * 6 * 16]
    assert _macs(nn.MaxPool2d(2), x) == [4 * 4 * 4 * 4]
    # adaptive 5x7 -> 3x2: windows [0,2) [1,4) [3,5) along H (7 reads), [0,4) [3,7) along W (8 reads)
    assert _macs(nn.AdaptiveAvgPool2d((3, 2)), torch.randn(1, 4, 5, 7)) == [4 * 7 * 8]
    assert _macs(nn.Linear(8, 3), x) == [4 * 8 * 3 * 8]

    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v) + torch.bmm(q[0], k[0].transpose(1, 2)).sum()

    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    assert sorted(_macs(Attn(), q, k, v)) == sorted([2 * 3 * 5 * 7 * (8 + 4), 3 * 5 * 7 * 8])


# -- anatomy and separable blocks ----------------------------------------------------
def test_conv_anatomy_kinds():
    net = nn.ModuleDict({
        "std": nn.Conv2d(8, 8, 3), "pw": nn.Conv2d(8, 8, 1), "dw": nn.Conv2d(8, 16, 3, groups=8),
        "grp": nn.Conv2d(8, 8, 3, groups=2), "grp_pw": nn.Conv2d(8, 8, 1, groups=4),
        "dil": nn.Conv2d(8, 8, 3, dilation=2), "dw_dil": nn.Conv2d(8, 8, 3, dilation=2, groups=8),
        "tr": nn.ConvTranspose2d(8, 8, 4, stride=2), "tr_dw": nn.ConvTranspose2d(8, 8, 3, groups=8),
        "dil_1x1": nn.Conv2d(8, 8, 1, dilation=3),
    })

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = net

        def forward(self, x):
            return [self.m[k](x) for k in net]

    r = rfscope.analyze(M(), input_shape=(1, 8, 16, 16))
    kinds = {k: r.records[r.node_name(f"m.{k}")].conv_kind for k in net}
    assert kinds == {
        "std": ["standard"], "pw": ["pointwise"], "dw": ["depthwise"], "grp": ["grouped"],
        "grp_pw": ["grouped", "pointwise"], "dil": ["standard", "dilated"],
        "dw_dil": ["depthwise", "dilated"], "tr": ["standard", "transposed"],
        "tr_dw": ["depthwise", "transposed"], "dil_1x1": ["pointwise"],
    }
    d = r.to_dict()
    assert {n["name"]: n["conv_kind"] for n in d["nodes"]}[r.node_name("m.dw")] == ["depthwise"]


@pytest.mark.parametrize("k,c_in,c_out,mult", [(3, 16, 32, 1), (5, 8, 24, 1), (3, 8, 12, 2)])
def test_separable_block_ratio_matches_formula(k, c_in, c_out, mult):
    net = nn.Sequential(
        nn.Conv2d(c_in, c_in * mult, k, padding=k // 2, groups=c_in, bias=False), nn.BatchNorm2d(c_in * mult),
        nn.ReLU(), nn.Conv2d(c_in * mult, c_out, 1, bias=False),
    )
    r = rfscope.analyze(net, input_shape=(1, c_in, 10, 10))
    (b,) = r.separable_blocks
    assert (b.depthwise, b.pointwise) == (r.node_name("0"), r.node_name("3"))
    assert b.params == k * k * c_in * mult + c_in * mult * c_out
    assert b.standard_params == k * k * c_in * c_out
    assert b.params_ratio == pytest.approx(mult * (1 / c_out + 1 / k**2))
    assert b.macs == 100 * (c_in * mult * k * k + c_out * c_in * mult)
    assert b.standard_macs == 100 * c_out * c_in * k * k
    (jb,) = r.to_dict()["separable_blocks"]
    assert jb["params_ratio"] == pytest.approx(mult * (1 / c_out + 1 / k**2)) and jb["kernel"] == [k, k]


def test_not_separable_through_a_merge_or_without_pointwise():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 8, 1)
            self.std = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.pw(self.dw(x) + x) + self.std(self.dw(x))

    assert rfscope.analyze(M(), input_shape=(1, 8, 8, 8)).separable_blocks == []
