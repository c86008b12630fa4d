"""Fallback tracing (torch.export, make_fx) and the ATen plugins.

The references are the symbolic-trace path (itself checked against published
numbers in test_published.py), the published VGG-16 pool5 RF, and hand-derived RFs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

import rfscope
import rfscope.core.state
from rfscope.cli import main
from rfscope.core.errors import TraceError
from rfscope.core.registry import Registry

tv = pytest.importorskip("torchvision")


def _same_rfs(ref: rfscope.Report, other: rfscope.Report) -> int:
    common = set(ref.modules) & set(other.modules)
    assert common
    for k in sorted(common):
        assert ref.rf(k).to_dict() == other.rf(k).to_dict(), k
    if isinstance(ref.records["output"].state, rfscope.core.state.TensorRF):
        assert ref.rf("output").to_dict() == other.rf("output").to_dict()
    return len(common)


def _dense_macs(rep: rfscope.Report) -> dict[str, int]:
    """MACs of convolutions and linear layers, per module path."""
    out: dict[str, int] = {}
    for r in rep.records.values():
        cls = r.module_class or ""
        if r.macs and r.module and r.op != "placeholder" and any(c in cls for c in ("Conv", "Linear")):
            out[r.module] = out.get(r.module, 0) + r.macs
    return out


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11"])
def test_torchvision_fallbacks_match_symbolic_trace(name):
    if name != "resnet18":  # export only, on the meta device (make_fx runs the model for real: slow on CPU)
        with torch.device("meta"):
            model = getattr(tv.models, name)(weights=None)
        ref = rfscope.analyze(model, (1, 3, 32, 32), trace="symbolic_trace")
        ex = rfscope.analyze(model, (1, 3, 32, 32), trace="export")
        assert _same_rfs(ref, ex) >= len(ref.modules) - 3
        assert sum(r.macs or 0 for r in ex.records.values()) == sum(r.macs or 0 for r in ref.records.values())
        return
    model = getattr(tv.models, name)(weights=None)
    shape = (1, 3, 32, 32)
    ref = rfscope.analyze(model, shape, trace="symbolic_trace")
    assert ref.trace_path == "symbolic_trace"
    ex = rfscope.analyze(model, shape, trace="export")
    assert ex.trace_path == "torch.export"
    # every module the symbolic path reports that has a node in the ATen graph (eval-mode Dropout has none)
    assert _same_rfs(ref, ex) >= len(ref.modules) - 3
    assert sum(r.macs or 0 for r in ex.records.values()) == sum(r.macs or 0 for r in ref.records.values())
    mf = rfscope.analyze(model, shape, trace="make_fx")
    assert mf.trace_path == "make_fx (specialised to the example input)"
    assert _same_rfs(ref, mf) >= len(ref.modules) - 3
    assert _dense_macs(mf) == _dense_macs(ref) and _dense_macs(ref)


def test_export_path_matches_published_vgg16_pool5():
    # Araujo et al. 2019 (Distill): vgg_16 pool5 212/32/90
    with torch.device("meta"):
        m = tv.models.vgg16(weights=None)
    rep = rfscope.analyze(m, (1, 3, 224, 224), trace="export")
    r = rep.rf("features.30")
    assert (r.size, r.stride, r.padding) == ((212, 212), (32, 32), (90, 90))


class ManyOps(nn.Module):
    """Exercises the ATen translations: every op here has an exact or global RF."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.shuffle = nn.PixelShuffle(2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.mpool = nn.MaxPool2d(2, return_indices=False)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = F.relu(self.conv(x))                              # 16x16
        y = self.dil(F.pad(y, (1, 0, 1, 0))[..., 1:, 1:])      # pad + slice
        a = F.interpolate(y, scale_factor=2, mode="nearest")
        b = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        u = torch.cat([a, b], dim=1)[:, :8] + self.up(y, output_size=a.shape[-2:])
        u = self.pool(u) * torch.sigmoid(u.mean(dim=(2, 3), keepdim=True))
        s = self.shuffle(torch.cat([u, u, u, u], 1).contiguous())       # 32 channels -> 8, x2
        s = self.mpool(s)
        t = s.permute(0, 2, 3, 1)                               # channels last
        t = self.fc(self.ln(t)).transpose(1, 3).transpose(2, 3)
        g = self.gn(t)
        q = g.flatten(2).transpose(1, 2)                        # tokens
        att = F.scaled_dot_product_attention(q, q, q)
        return g.amax(dim=1, keepdim=True), att


@pytest.mark.parametrize("mode", ["export", "make_fx"])
def test_aten_translations_match_symbolic(mode):
    m = ManyOps()
    ref = rfscope.analyze(m, (1, 3, 32, 32), trace="symbolic_trace")
    assert not ref.unsupported and not ref.errors
    other = rfscope.analyze(m, (1, 3, 32, 32), trace=mode)
    assert not other.unsupported, other.unsupported
    assert not other.errors, other.errors
    _same_rfs(ref, other)
    # the two outputs: amax over channels keeps the local RF, attention is global
    outs_ref = [rec for rec in ref.records.values() if rec.op == "output"][0].inputs
    outs = [rec for rec in other.records.values() if rec.op == "output"][0].inputs
    for a, b in zip(outs_ref, outs, strict=True):
        assert ref.rf(a).to_dict() == other.rf(b).to_dict()
    assert other.rf(outs[1]).status == "global"


class ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(3, 4, 3)
        self.big = nn.Conv2d(3, 4, 7)

    def forward(self, x):
        if x.shape[-1] > 20:  # control flow on a shape: symbolic_trace fails, torch.export resolves it
            return self.big(x)
        return self.small(x)


def test_shape_control_flow_uses_export():
    rep = rfscope.analyze(ShapeBranch(), (1, 3, 32, 32))
    assert rep.trace_path == "torch.export"
    assert rep.rf("output").size == (7, 7)
    assert rfscope.analyze(ShapeBranch(), (1, 3, 16, 16)).rf("output").size == (3, 3)
    d = rep.to_dict()
    assert d["trace"] == "torch.export" and "torch.fx failed" in d["trace_fallback"]
    assert "trace: torch.export" in rep.table()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 5, padding=2)

    def forward(self, x):
        if torch.isfinite(x).all():  # control flow on tensor values: always true
            return self.b(x)
        return self.a(x)


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.block = Block()

    def forward(self, x):
        return self.block(self.stem(x))


def test_value_control_flow_uses_make_fx():
    m = ValueBranch()
    rep = rfscope.analyze(m, (1, 3, 32, 32))
    assert rep.trace_path == "make_fx (specialised to the example input)"
    # stem k3 s2 then k5: 3 + 4*2 = 11, stride 2, padding 0 + 2*2 = 4
    r = rep.rf("block")
    assert (r.size, r.stride, r.padding) == ((11, 11), (2, 2), (4, 4))
    assert rep.rf("block.b").size == (11, 11)
    res = CliRunner().invoke(main, ["analyze", "torchvision:resnet18", "--trace", "export", "--format", "json",
                                    "--node", "layer1", "--input-shape", "3,32,32"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["trace"] == "torch.export"


class ShapeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Conv2d(4, 4, 5, padding=2)

    def forward(self, x):
        return self.b(x) if x.shape[-1] > 4 else x  # symbolic_trace fails here unless the block is a leaf


class WithShapeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.block = ShapeBlock()

    def forward(self, x):
        return self.block(self.stem(x))


def test_leaf_module_is_opaque_or_plugin():
    m = WithShapeBlock()
    rep = rfscope.analyze(m, (1, 3, 32, 32), leaf_modules=["block"])
    assert rep.trace_path == "symbolic_trace"
    assert rep.records[rep.node_name("block")].op == "call_module"
    r = rep.rf("block")
    assert r.status == "unknown" and "ShapeBlock" in (r.reason or "")
    assert rep.rf("stem").size == (3, 3)
    reg = Registry()
    reg.ensure_loaded()
    reg.add("test-block", [ShapeBlock], rf=lambda ctx: rfscope.core.ops.local(
        ctx, {-1: lambda a: rfscope.core.rf.conv(a, 5, 1, 2), -2: lambda a: rfscope.core.rf.conv(a, 5, 1, 2)}))
    rep2 = rfscope.analyze(m, (1, 3, 32, 32), registry=reg)  # a plugin class is a leaf by itself
    assert rep2.trace_path == "symbolic_trace"
    # hand-derived: k3 s2, then k5 p2 at stride 2: size 3 + 4*2 = 11, padding 2*2 = 4
    assert (rep2.rf("block").size, rep2.rf("block").padding) == ((11, 11), (4, 4))
    res = CliRunner().invoke(main, ["analyze", f"{__file__}:WithShapeBlock", "--input-shape", "3,32,32",
                                    "--leaf", "block", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["trace"] == "symbolic_trace" and d["modules"]["block"]["rf"]["status"] == "unknown"


def test_nothing_traces_names_module_line_and_fix():
    with torch.device("meta"):
        m = ValueBranch()  # meta: make_fx cannot run it, export cannot branch on values
    with pytest.raises(TraceError) as ei:
        rfscope.analyze(m, (1, 3, 32, 32))
    msg = str(ei.value)
    assert "\n" not in msg
    assert "'block'" in msg and "test_fallback.py:" in msg and "isfinite" in msg
    assert "--leaf block" in msg and "Writing a plugin" in msg and "example_inputs" in msg
    res = CliRunner().invoke(main, ["analyze", "torchvision:resnet18", "--trace", "bogus"])
    assert res.exit_code == 2


class OneD(nn.Module):
    """1-d ops whose ATen forms differ from the torch-level ones (pool1d as pool2d, upsample_linear1d ...)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 4, 5, stride=2, padding=2)
        self.p = nn.MaxPool1d(3, 2, 1)
        self.t = nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1)
        self.a = nn.AvgPool1d(2)
        self.ad = nn.AdaptiveAvgPool1d(5)
        self.ad2 = nn.AdaptiveMaxPool1d(4)

    def forward(self, x):
        y = F.interpolate(self.t(self.p(self.c(x))), scale_factor=3, mode="linear")
        y = F.pad(y, (2, 1), mode="reflect")
        y = torch.stack([y, y * 2], dim=1).sum(1)
        a, b = y.split([2, 2], dim=1)
        y = torch.cat([a, b.chunk(2, dim=1)[0], b.unbind(1)[1].unsqueeze(1)], 1)
        return self.ad2(self.ad(self.a(y))), y.softmax(-1), y[..., 3:8], y[..., 4], y[..., 1::3]


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(1, 2, 3, padding=1)
        self.p = nn.MaxPool3d(2)
        self.a = nn.AvgPool3d(2, padding=1)
        self.ad = nn.AdaptiveAvgPool3d((3, 2, 2))
        self.n = nn.InstanceNorm3d(2)

    def forward(self, x):
        y = F.interpolate(self.p(self.c(x)), scale_factor=2, mode="trilinear", align_corners=True)
        y = F.interpolate(y, scale_factor=(1, 2, 2), mode="nearest-exact")
        return self.ad(self.n(self.a(y)))


@pytest.mark.parametrize("mode", ["export", "make_fx"])
@pytest.mark.parametrize("model,shape", [(OneD, (1, 2, 64)), (ThreeD, (1, 1, 8, 12, 12))])
def test_aten_1d_3d_match_symbolic(model, shape, mode):
    m = model()
    ref = rfscope.analyze(m, shape, trace="symbolic_trace")
    assert not ref.unsupported and not ref.errors
    other = rfscope.analyze(m, shape, trace=mode)
    assert not other.unsupported and not other.errors, (other.unsupported, other.errors)
    _same_rfs(ref, other)
    outs_ref = [rec for rec in ref.records.values() if rec.op == "output"][0].inputs
    outs = [rec for rec in other.records.values() if rec.op == "output"][0].inputs
    assert len(outs_ref) == len(outs)
    for a, b in zip(outs_ref, outs, strict=True):
        assert ref.rf(a).to_dict() == other.rf(b).to_dict(), (a, b)
        assert ref.rf(a).status in ("exact", "global"), a  # a real comparison, not unknown == unknown


class InPlace(nn.Module):
    """``y.add_(z)`` mutates a tensor that is read again afterwards through its old name."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 5, padding=2)
        self.c3 = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        z = self.c2(y)
        y.add_(z)
        return self.c3(y)


@pytest.mark.parametrize("mode", ["export", "make_fx"])
def test_in_place_mutation_is_functionalised(mode):
    # hand-derived: c3 reads y + z, z = c2(c1(x)): 3 + 4 + 2 = 9 (not 5, as if the add_ were lost)
    rep = rfscope.analyze(InPlace(), (1, 2, 16, 16), trace=mode)
    assert rep.rf("output").size == (9, 9)
    assert rep.rf("output").padding == (4, 4)


def test_in_place_merge_leaves_symbolic_trace():
    rep = rfscope.analyze(InPlace(), (1, 2, 16, 16))
    assert rep.trace_path == "torch.export" and rep.rf("output").size == (9, 9)
    assert "add_" in rep.to_dict()["trace_fallback"]
    with pytest.raises(TraceError, match="add_"):
        rfscope.analyze(InPlace(), (1, 2, 16, 16), trace="symbolic_trace")


class ConstMask(nn.Module):
    """A constant mask built with in-place slice writes on ``torch.zeros`` (as MONAI SwinUNETR's
    shifted-window mask), in a loop over a size (``range`` of a Proxy: symbolic_trace fails).
    ``use="add"`` adds it to the features, ``"none"`` leaves it unread, ``"write"`` writes
    features into it (an input-dependent update of a view: a real hazard)."""

    def __init__(self, use: str):
        super().__init__()
        self.use = use
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        mask = torch.zeros(1, 2, h, w, device=x.device)
        for i in range(h // 4):
            mask[:, :, 4 * i:4 * i + 2] = float(i)
        y = self.c1(x)
        if self.use == "add":
            y = y + mask
        elif self.use == "write":
            mask[:, :, :, : w // 2] = y[:, :, :, : w // 2]
            y = mask
        return self.c2(y)


@pytest.mark.parametrize("mode", ["auto", "make_fx"])
@pytest.mark.parametrize("use", ["add", "none", "write"])
def test_constant_in_place_updates_are_not_functionalised(use, mode, monkeypatch):
    """In-place updates that touch only input-independent tensors leave the exported graph as it is
    (functionalising it took 4.8 s of SwinUNETR's 7.5 s export); unread ones are dropped; an update
    that writes input-dependent values into a view still functionalises. Same RFs either way."""
    import rfscope.trace.aten as aten

    calls = []
    real = torch.export.ExportedProgram.run_decompositions
    real_fmf = aten._functional_make_fx

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", spy)
    monkeypatch.setattr(aten, "_functional_make_fx", lambda *a: (calls.append(1), real_fmf(*a))[1])
    rep = rfscope.analyze(ConstMask(use), (1, 1, 16, 16), trace=mode)
    assert rep.trace_path == ("torch.export" if mode == "auto" else "make_fx (specialised to the example input)")
    assert bool(calls) == (use == "write")
    targets = [r.target for r in rep.records.values()]
    updates = [t for t in targets if t.startswith("aten.") and t.split(".")[1].endswith("_")]  # copy_, fill_
    assert bool(updates) == (use == "add")  # the unread mask is gone
    if use == "none":
        assert "aten.zeros.default" not in targets and not rep.to_dict()["summary"]["macs_unknown"]
    monkeypatch.setattr(aten, "_aliasing_hazard", lambda gm: True)  # the functionalised graph, as before
    ref = rfscope.analyze(ConstMask(use), (1, 1, 16, 16), trace=mode)
    assert rep.rf("output").to_dict() == ref.rf("output").to_dict()
    assert rep.to_dict()["summary"]["params_total"] == ref.to_dict()["summary"]["params_total"]
    if use != "write":  # hand-derived: two 3x3 convs
        assert rep.rf("output").size == (5, 5) and rep.rf("output").status == "exact"


class HeadDropout(nn.Module):
    """MViT's head in miniature: tokens, the first one picked (a view), then an in-place dropout on
    it (``nn.Dropout(inplace=True)``, or ``F.dropout(training=True, inplace=True)`` when ``train``);
    ``fresh``: on a copy of it (no hazard)."""

    def __init__(self, inplace: bool = True, train: bool = False, fresh: bool = False):
        super().__init__()
        self.train_drop = train
        self.fresh = fresh
        self.c = nn.Conv2d(3, 8, 4, stride=4)
        self.drop = nn.Dropout(0.5, inplace=inplace)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        t = self.c(x).flatten(2).transpose(1, 2)  # N, L, C tokens
        first = t[:, 0] * 1.0 if self.fresh else t[:, 0]
        head = F.dropout(first, 0.5, training=True, inplace=True) if self.train_drop else self.drop(first)
        return self.fc(head)


def test_eval_mode_in_place_dropout_is_no_hazard(monkeypatch):
    """An in-place dropout with ``train=False`` writes nothing: it is dropped from the exported graph
    rather than functionalising the whole graph for it (3 s of MViT-B's 5.4 s trace).  Same RFs and
    counts as the out-of-place dropout and as the functionalised graph; with ``train=True`` the
    update is real and the graph is still functionalised; one that is no hazard stays as it was."""
    import rfscope.trace.aten as aten

    calls = []
    real = torch.export.ExportedProgram.run_decompositions

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", spy)
    model = HeadDropout()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rep = rfscope.analyze(model, (1, 3, 16, 16), trace="export")
    assert not calls
    assert not [r.target for r in rep.records.values() if "dropout_" in r.target]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()) and model.drop.inplace
    plain = rfscope.analyze(HeadDropout(inplace=False), (1, 3, 16, 16), trace="export")
    monkeypatch.setattr(aten, "_aliasing_hazard", lambda gm: True)  # the functionalised graph, as before
    ref = rfscope.analyze(HeadDropout(), (1, 3, 16, 16), trace="export")
    for other in (plain, ref):
        assert rep.rf("output").to_dict() == other.rf("output").to_dict()
        assert rep.to_dict()["summary"] == other.to_dict()["summary"]
    assert rep.rf("output").size == (4, 4)  # the first token: one 4x4 patch
    monkeypatch.undo()
    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", spy)
    calls.clear()
    rfscope.analyze(HeadDropout(train=True), (1, 3, 16, 16), trace="export")
    assert calls  # a training-mode dropout writes its operand: still functionalised
    calls.clear()
    kept = rfscope.analyze(HeadDropout(fresh=True), (1, 3, 16, 16), trace="export")
    assert not calls and [r for r in kept.records.values() if r.target == "aten.dropout_.default"]
    assert kept.rf("output").to_dict() == rep.rf("output").to_dict()


class TokenSplit(nn.Module):
    """Tokens split into the first and the rest (MViT's class token) or into halves, by
    ``tensor_split`` or by ``split``; then a feature map split along its width."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        t = y.permute(0, 2, 3, 1).flatten(1, 2)  # N, H*W, C: a per-position table
        if self.how == "indices":
            return (*torch.tensor_split(t, (1,), dim=1), torch.tensor_split(y, (3,), dim=3)[1])
        if self.how == "sections":
            return (*t.tensor_split(2, dim=1), y.tensor_split(2, dim=3)[1])
        if self.how == "split_indices":
            return (*t.split([1, t.shape[1] - 1], dim=1), y.split([3, y.shape[3] - 3], dim=3)[1])
        return (*t.split(t.shape[1] // 2, dim=1), y.split(y.shape[3] // 2, dim=3)[1])


@pytest.mark.parametrize("mode", ["auto", "export"])
def test_tensor_split_is_a_split(mode):
    """``tensor_split`` (by indices or sections) gives each piece the RF of the same ``split``, on
    per-position tables and on periodic tensors; it used to have no rule (MViT's class token)."""
    for how, ref in (("indices", "split_indices"), ("sections", "split_halves")):
        rep = rfscope.analyze(TokenSplit(how), (1, 3, 8, 8), trace=mode).to_dict()
        exp = rfscope.analyze(TokenSplit(ref), (1, 3, 8, 8), trace=mode).to_dict()
        got = [o["rf"] for o in rep["outputs"]]
        assert got == [o["rf"] for o in exp["outputs"]]
        assert all(r is not None and r["status"] == "exact" for r in got), got
        assert not rep["unsupported"]


class Builtins(nn.Module):
    """Python builtins on traced values: ``len``, ``math.sqrt`` of a size, ``range`` over a size."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        scale = math.sqrt(x.shape[1])
        for _ in range(len(x)):  # len(x) == batch size == 1
            x = self.c(x) / scale
        return x


def test_unsupported_builtins_use_export():
    rep = rfscope.analyze(Builtins(), (1, 3, 16, 16))
    assert rep.trace_path == "torch.export"
    assert rep.rf("output").size == (3, 3)
    assert rfscope.analyze(Builtins(), (2, 3, 16, 16)).rf("output").size == (5, 5)  # the loop runs twice


class Factory(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        bias = torch.ones(x.shape[1], 1, 1, device=x.device)  # recorded by make_fx with device=cpu
        return self.c(x) * bias


def test_make_fx_factory_calls_run_on_meta():
    rep = rfscope.analyze(Factory(), (1, 3, 16, 16), trace="make_fx")
    assert rep.rf("output").size == (3, 3) and not rep.errors


class _SamePad(nn.Module):
    """TF-style 'same' padding before a strided conv, then a pad read by the output itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.pad(y, (1, 0, 1, 0))


def test_pad_read_by_a_conv_keeps_the_periodic_form_on_every_path() -> None:
    """On both tracers the pad before the conv keeps the periodic convention (periodic result, its
    reader is a conv, also when an ATen call is handed to the torch-level plugin), and the pad read
    by the output goes to the per-position form, where the padded row and column see nothing."""
    for trace in ("symbolic_trace", "export"):
        rep = rfscope.analyze(_SamePad(), (1, 3, 16, 16), trace=trace)
        conv = next(r for r in rep.records.values() if "conv" in str(r.target).lower() and r.rf is not None)
        assert conv.rf is not None and conv.rf.table is None and conv.rf.size == (3, 3), (trace, conv.rf)
        out = rep.rf("output")
        assert out.table is not None, trace
        assert out.table.box((0, 0, 0, 0)) is None and out.table.box((0, 0, 1, 1)) == ((0, 2), (0, 2)), trace


class _ChannelPadResidual(nn.Module):
    """MONAI HighResNet's residual block: a dilated conv widens the channels, the identity branch is
    zero-padded along the channel dim to match, and the two are added."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.pad(x, (0, 0, 0, 0, 1, 1))


def test_a_channel_pad_adds_no_position_and_stays_periodic() -> None:
    """Padding only the channel dim adds no position, whoever reads it: the periodic form holds (an
    exact 5x5 window with holes, never the per-position form or unknown), and the gradient oracle
    sees the same pixels at an interior unit."""
    from oracle import Oracle

    shape = (1, 4, 16, 16)
    for trace in ("symbolic_trace", "export"):
        rep = rfscope.analyze(_ChannelPadResidual(), shape, trace=trace)
        out = rep.rf("output")
        assert out.status == "exact" and out.table is None and out.size == (5, 5), (trace, out)
        rows, cols = Oracle(_ChannelPadResidual(), shape).support((7, 9))
        assert (sorted(rows), sorted(cols)) == (out.pixels((7, 9))[0], out.pixels((7, 9))[1]), trace
