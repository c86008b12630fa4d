"""Init check: every check fires on a broken model, and stays silent on docs/design.md §6's legitimate patterns."""

import json
import math
import textwrap

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.core.initview import WeightView

tv = pytest.importorskip("torchvision")


def _check(model, *inputs, **kw):
    return rfscope.check_init(model, example_inputs=inputs, **kw)


def _ids(findings, severities=("error", "warning")):
    return sorted((f.check, f.param or f.node) for f in findings if f.severity in severities)


def _mlp(*widths, act=nn.ReLU):
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def _seed():
    torch.manual_seed(0)


# -- fine models -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_defaults_are_fine(name):
    _seed()
    fs = rfscope.check_init(getattr(tv.models, name)(), input_shape=(1, 3, 32, 32))
    assert _ids(fs) == []


def test_plain_mlp_default_init_is_fine():
    _seed()
    assert _ids(_check(_mlp(32, 64, 64, 10), torch.randn(4, 32))) == []


# -- legitimate zeros and constants (docs/design.md §6) ----------------------------
def test_resnet50_zero_init_residual():
    _seed()
    m = tv.models.resnet50(zero_init_residual=True)
    blocks = [b for b in m.modules() if isinstance(b, tv.models.resnet.Bottleneck)]
    assert len(blocks) == 16 and all(float(b.bn3.weight.detach().abs().max()) == 0 for b in blocks)
    assert _ids(rfscope.check_init(m, input_shape=(1, 3, 32, 32))) == []


def test_norm_layers_at_one_and_zero_and_zero_biases():
    _seed()
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 10))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(m.bias)
    assert _ids(_check(net, torch.randn(2, 3, 16, 16))) == []


class _LayerScaleBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.GELU()
        self.gamma = nn.Parameter(1e-6 * torch.ones(c, 1, 1))

    def forward(self, x):
        return x + self.gamma * self.act(self.conv(x))


def test_layerscale():
    _seed()
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *[_LayerScaleBlock(16) for _ in range(4)])
    assert _ids(_check(net, torch.randn(2, 3, 16, 16))) == []


class _LoRALinear(nn.Module):
    def __init__(self, d_in, d_out, r=4):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.A = nn.Linear(d_in, r, bias=False)  # PyTorch default (kaiming_uniform, a=sqrt(5)), as in peft
        self.B = nn.Linear(r, d_out, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.base(x) + self.B(self.A(x)) * 2.0


def test_lora_b_zero():
    _seed()
    net = nn.Sequential(_LoRALinear(32, 64), nn.ReLU(), _LoRALinear(64, 10))
    assert _ids(_check(net, torch.randn(4, 32))) == []


def test_frozen_weights_are_not_judged():
    _seed()
    net = _mlp(64, 64, 10)
    nn.init.uniform_(net[0].weight, 0.0, 0.25)  # nonzero-mean if it were trainable
    net[0].requires_grad_(False)
    assert _ids(_check(net, torch.randn(4, 64))) == []


def test_lora_with_both_factors_zero_is_stuck():
    _seed()
    net = nn.Sequential(_LoRALinear(32, 64), nn.ReLU(), _LoRALinear(64, 10))
    nn.init.zeros_(net[0].A.weight)
    assert _ids(_check(net, torch.randn(4, 32))) == [("symmetric-units", "0.A.weight")]


class _ControlNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.hint = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.zero_in = nn.Conv2d(16, 16, 1)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.zero_out = nn.ModuleList([nn.Conv2d(16, 16, 1) for _ in range(2)])
        for m in [self.zero_in, *self.zero_out]:  # zero_module()
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.body[0](x) + self.zero_in(self.hint(x))
        h1 = self.body[1](h)
        h2 = self.body[2](h1)
        return self.zero_out[0](h1), self.zero_out[1](h2)


def test_controlnet_zero_convs():
    _seed()
    assert _ids(_check(_ControlNetish(), torch.randn(2, 3, 16, 16))) == []


class _Tokens(nn.Module):
    def __init__(self, vocab=50, d=64, tie=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)  # N(0, 1), row 0 zero
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, t):
        return self.head(self.norm(torch.relu(self.mix(self.emb(t)))))


def test_padding_idx():
    _seed()
    m = _Tokens()
    assert float(m.emb.weight[0].detach().abs().max()) == 0
    assert _ids(_check(m, torch.randint(0, 50, (2, 7)))) == []


def test_tied_weights_checked_once_and_not_judged_by_the_heads_fan_in():
    _seed()
    m = _Tokens(tie=True)
    assert float(m.head.weight.detach().std()) > 4 * math.sqrt(2 / 64)  # untied, this scale would be flagged
    assert _ids(_check(m, torch.randint(0, 50, (2, 7)))) == []
    # the same weights untied, with no norm before the head, are flagged
    u = _Tokens()
    u.norm = nn.Identity()
    with torch.no_grad():
        u.head.weight.normal_()
    assert _ids(_check(u, torch.randint(0, 50, (2, 7))), ("warning",)) == [("scale", "head.weight")]


# -- broken models: exactly the right findings ----------------------------------------
def test_constant_weights_symmetric_units():
    net = _mlp(16, 32, 32, 4)
    for p in net.parameters():
        nn.init.constant_(p, 0.5)
    fs = _check(net, torch.randn(4, 16))
    assert _ids(fs) == [("symmetric-units", "0.weight"), ("symmetric-units", "2.weight")]
    f = next(f for f in fs if f.param == "0.weight")
    assert f.severity == "error" and f.evidence["units"] == 32 and f.evidence["constant"] == 0.5
    assert f.evidence["consumers"] == ["2"]


def test_constant_layer_with_random_consumer_is_not_symmetric():
    _seed()
    net = _mlp(16, 32, 32, 4)
    nn.init.constant_(net[0].weight, 0.5)
    nn.init.zeros_(net[0].bias)
    assert _ids(_check(net, torch.randn(4, 16), forward=False)) == []


def test_symmetry_through_batchnorm_pool_and_flatten():
    _seed()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    nn.init.constant_(net[0].weight, 0.1)
    nn.init.zeros_(net[0].bias)
    nn.init.constant_(net[5].weight, 0.3)
    fs = _check(net, torch.randn(2, 3, 8, 8), forward=False)
    assert _ids(fs) == [("symmetric-units", "0.weight")]
    # channel-specific BatchNorm affine parameters break the symmetry
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(0.5, 1.5, 8))
    assert _ids(_check(net, torch.randn(2, 3, 8, 8), forward=False)) == []


def test_symmetry_needs_the_consumer_to_mix_the_same_dim():
    # Linear acts on the last dim (positions here), the Conv1d on dim 1 (channels): units not comparable
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Conv1d(4, 3, 1))
    for p in net.parameters():
        nn.init.constant_(p, 0.5)
    assert _ids(_check(net, torch.randn(2, 4, 6), forward=False)) == []


def test_duplicate_units():
    _seed()
    net = _mlp(8, 6, 3)
    with torch.no_grad():
        net[0].weight[1] = net[0].weight[0]
        net[0].bias[1] = net[0].bias[0]
        net[0].weight[4] = net[0].weight[2]
        net[0].bias[4] = net[0].bias[2]
    # outgoing weights differ: the consumer tells the copies apart
    assert _ids(_check(net, torch.randn(4, 8), forward=False)) == []
    with torch.no_grad():
        net[2].weight[:, 1] = net[2].weight[:, 0]
    fs = _check(net, torch.randn(4, 8), forward=False)
    assert _ids(fs) == [("duplicate-units", "0.weight")]
    assert fs[0].evidence["groups"] == [[0, 1]] and fs[0].evidence["duplicated"] == 2


def test_dead_units():
    _seed()
    net = _mlp(8, 16, 4)
    with torch.no_grad():
        net[0].weight[:5] = 0
        net[0].bias[:5] = 0
        net[0].bias[2] = 0.1  # alive: relu(0.1) > 0
    fs = _check(net, torch.randn(4, 8))
    assert _ids(fs) == [("dead-units", "0.weight")]
    assert fs[0].evidence["indices"] == [0, 1, 3, 4] and fs[0].evidence["units"] == 16
    # GELU has a non-zero slope at 0: not dead
    net[1] = nn.GELU()
    assert _ids(_check(net, torch.randn(4, 8))) == []


def test_dead_units_through_batchnorm():
    _seed()
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        net[0].weight[2:4] = 0
    fs = _check(net, torch.randn(2, 3, 8, 8))
    assert _ids(fs) == [("dead-units", "0.weight")] and fs[0].evidence["indices"] == [2, 3]


def test_nonzero_mean():
    _seed()
    net = _mlp(64, 64, 10)
    nn.init.uniform_(net[0].weight, 0.0, 0.25)
    fs = _check(net, torch.randn(4, 64))
    assert _ids(fs) == [("nonzero-mean", "0.weight")]
    ev = fs[0].evidence
    assert ev["mean"] == pytest.approx(0.125, rel=0.1) and ev["std"] == pytest.approx(0.25 / math.sqrt(12), rel=0.1)


def test_scale_only_without_normalisation():
    _seed()
    net = _mlp(256, 256, 10)
    nn.init.normal_(net[0].weight, std=1.0)  # 11x He
    fs = _check(net, torch.randn(4, 256))
    assert _ids(fs) == [("scale", "0.weight")]
    assert fs[0].evidence["fan_in"] == 256 and fs[0].evidence["std"] == pytest.approx(1.0, rel=0.05)
    nn.init.normal_(net[0].weight, std=1e-4)
    assert _ids(_check(net, torch.randn(4, 256), forward=False)) == [("scale", "0.weight")]
    normed = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10))
    nn.init.normal_(normed[0].weight, std=1.0)
    assert _ids(_check(normed, torch.randn(4, 256))) == []


@pytest.mark.parametrize("gain,check", [(3.0, "signal-exploding"), (1 / 3, "signal-vanishing")])
def test_signal_across_depth(gain, check):
    _seed()
    net = _mlp(*[128] * 9)
    for m in net:
        if isinstance(m, nn.Linear):  # within the scale check's range, but x3 (or /3) per layer
            nn.init.normal_(m.weight, std=gain * math.sqrt(2 / 128))
            nn.init.zeros_(m.bias)
    r = rfscope.analyze(net, example_inputs=(torch.randn(8, 128),), check_init=True)
    fs = r.findings
    assert [(f.check, f.severity) for f in fs] == [(check, "warning")]
    assert r.records[fs[0].node].module == "14"  # the last Linear
    ev = fs[0].evidence
    assert ev["depth"] == 7 and len(ev["profile"]) == 8
    assert json.loads(r.to_json())["findings"][0]["evidence"]["profile"][0][0] == "0"
    assert ev["ratio"] == pytest.approx(gain**7, rel=0.5)  # He-scaled ReLU layers keep the std, times gain


def test_nonfinite_weights_and_activations():
    _seed()
    net = _mlp(8, 8, 2)
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
        net[2].bias[1] = float("inf")
    fs = _check(net, torch.randn(4, 8))
    assert _ids(fs) == [("nonfinite", "0.weight"), ("nonfinite", "2.bias")]
    assert fs[0].evidence == {"nan": 1, "inf": 0, "numel": 64}

    class Log(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.log(self.fc(x))

    fs = _check(Log(), torch.randn(4, 8))
    assert _ids(fs) == [("signal-nonfinite", "log")]


def test_meta_model_needs_real_weights():
    with torch.device("meta"):
        net = _mlp(4, 4)
    with pytest.raises(rfscope.InitCheckError, match="needs real weights"):
        _check(net, torch.randn(2, 4))


def test_user_model_untouched():
    _seed()
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 4, 1))
    net.train()
    net[0].requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _check(net, torch.randn(2, 3, 8, 8))
    assert net.training and all(m.training for m in net.modules())
    assert not net[0].weight.requires_grad and net[4].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_analyze_carries_findings_and_json():
    net = _mlp(4, 8, 2)
    for p in net.parameters():
        nn.init.zeros_(p)
    r = rfscope.analyze(net, example_inputs=(torch.randn(2, 4),), check_init=True)
    assert [f.check for f in r.findings] == ["dead-units"]
    d = r.to_dict()
    assert d["findings"][0]["check"] == "dead-units" and d["findings"][0]["severity"] == "error"
    assert rfscope.analyze(net, example_inputs=(torch.randn(2, 4),)).findings is None


def test_custom_rule_for_a_custom_layer():
    class MyDense(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.full((6, 4), 0.5))

        def forward(self, x):
            return x @ self.w.t()

    net = nn.Sequential(MyDense(), nn.ReLU(), nn.Linear(6, 2))
    nn.init.constant_(net[2].weight, 1.0)
    x = torch.randn(2, 4)
    assert _ids(_check(net, x, forward=False)) == []  # no init view: not judged
    reg = rfscope.Registry()  # a registry of our own: built-ins plus this plugin
    reg.add("mydense", (MyDense,), init_view=lambda ctx: WeightView(ctx.module.w, None, ctx.name(ctx.module.w) or "w"))
    assert _ids(_check(net, x, registry=reg)) == [("symmetric-units", "0.w")]
    assert _ids(_check(net, x)) == []  # the process-wide registry is untouched


# -- CLI -----------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        example_inputs = (torch.randn(2, 16),)
    """))
    bad = tmp_path / "bad.py"
    bad.write_text(good.read_text() + "for p in model.parameters():\n    nn.init.zeros_(p)\n")
    meta = tmp_path / "meta.py"
    meta.write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        with torch.device("meta"):
            model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        input_shape = (1, 3, 16, 16)
    """))
    run = CliRunner().invoke
    r = run(main, ["analyze", str(good), "--check-init"])
    assert r.exit_code == 0, r.output
    assert "init check: no findings" in r.output
    r = run(main, ["analyze", str(bad), "--check-init"])
    assert r.exit_code == 1 and "error: dead-units: 0.weight" in r.output
    r = run(main, ["analyze", str(bad), "--check-init", "--format", "json"])
    assert r.exit_code == 1 and '"check": "dead-units"' in r.output
    assert run(main, ["analyze", str(bad)]).exit_code == 0  # not asked
    r = run(main, ["analyze", str(meta), "--check-init"])
    assert r.exit_code == 2 and "needs real weights" in r.output
    assert run(main, ["analyze", str(tmp_path / "missing.py"), "--check-init"]).exit_code == 2


# -- what the plugins say -------------------------------------------------------------
def test_aten_ops_have_the_traits_of_their_torch_level_plugins():
    import torch.nn.functional as F

    from rfscope.core import traits as T

    reg = rfscope.default_registry()
    aten = torch.ops.aten
    pairs = [(aten.relu.default, F.relu), (aten.relu6.default, F.relu6), (aten.gelu.default, F.gelu),
             (aten.sigmoid.default, torch.sigmoid), (aten.exp.default, torch.exp), (aten.add.Tensor, torch.add),
             (aten.dropout.default, F.dropout), (aten.clone.default, torch.clone),
             (aten.max_pool2d.default, F.max_pool2d), (aten.avg_pool2d.default, F.avg_pool2d),
             (aten._adaptive_avg_pool2d.default, F.adaptive_avg_pool2d), (aten.flatten.using_ints, torch.flatten),
             (aten.native_layer_norm.default, F.layer_norm), (aten.native_group_norm.default, F.group_norm),
             (aten.convolution.default, F.conv2d), (aten.linear.default, F.linear)]
    for a, t in pairs:
        assert reg.lookup(a).traits == reg.lookup(t).traits, a
    # batch norm in an ATen graph may be training (group-norm like) or eval: only what both are
    assert reg.lookup(aten.native_batch_norm.default).traits == {T.NORM}
    assert T.RELU in reg.lookup(nn.ReLU).traits and T.BATCHNORM in reg.lookup(nn.BatchNorm2d).traits
    assert T.CHANNELWISE not in reg.lookup(nn.Dropout).traits  # random: breaks the symmetry
    for t in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, F.conv2d, F.linear, aten.convolution.default):
        assert reg.lookup(t).init_view is not None, t


def test_export_graphs_judge_conv_weights_through_the_delegated_view():
    # aten.conv2d is handed to the F.conv2d plugin's view (make_fx graphs hold their own
    # constants, not the model's parameters: their weights are not judged)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
    for p in net.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 3, 8, 8)
    r = rfscope.analyze(net, example_inputs=(x,), trace="export")
    found = rfscope.check_init(net, example_inputs=(x,), report=r, forward=False)
    assert ("dead-units", "0.weight") in _ids(found) and r.findings == found
