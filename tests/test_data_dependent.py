"""Models with data-dependent parts (issue 13 item 4): analysed as far as they go.

A data-dependent op (``nonzero``, a boolean mask, ``.item()``, NMS) stops shape propagation on
meta tensors; rfscope then propagates on real tensors (a seeded random input, the user's random
stream left where it was, the model untouched), reports what does not depend on the data's
values as usual, and marks the op and everything computed from it ``unknown`` naming the op.
Full torchvision detectors are traced by make_fx; their backbone and FPN are exact (checked
against the gradient oracle) and their heads after the proposals are ``unknown``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from oracle import Oracle

import rfscope
from rfscope.cli import main
from rfscope.loader import load_model

tv = pytest.importorskip("torchvision")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Selects(nn.Module):
    """Two convs; the second's output is exact, what the data selects is not."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c = nn.Conv2d(3, 4, 3)
        self.d = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.c(x)
        z = self.d(y)
        if self.how == "mask":
            sel = y[y > 0]
        elif self.how == "nonzero":
            sel = torch.nonzero(y)
        elif self.how == "where":
            sel = torch.where(y > 0)[0]
        elif self.how == "item":
            sel = z * y.mean().item()
        else:  # nms: boxes and scores from the feature map
            flat = y.flatten(2)[0]
            boxes = torch.cat([flat[:2].t(), flat[:2].t() + flat[2:].t().abs() + 1], dim=1)
            sel = flat[0][tv.ops.nms(boxes, flat[0], 0.5)]
        return z, sel


NAMED = {"mask": "boolean-mask indexing", "nonzero": "after nonzero", "where": "after torch.where(condition)",
         "item": "after item()", "nms": "after nms"}


@pytest.mark.parametrize("how", list(NAMED))
def test_data_dependent_op_is_unknown_and_the_rest_exact(how: str) -> None:
    m = Selects(how).eval()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.random.get_rng_state()
    rep = rfscope.analyze(m, input_shape=(1, 3, 16, 16))
    assert torch.equal(rng, torch.random.get_rng_state())  # the user's random stream did not move
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())  # nor the model
    assert rep.rf("d").status == "exact" and rep.rf("d").size == (5, 5)
    leaf = rep.output_leaves()[1]
    assert leaf.node is not None
    sel = rep.rf(leaf.node)
    assert sel.status == "unknown" and NAMED[how] in (sel.reason or ""), sel
    assert "data-dependent" in (sel.reason or "")
    assert rep.trace_fallback and "shapes propagated on real tensors" in rep.trace_fallback
    assert rep.summary.params_total == n_params(m)


def test_meta_model_gets_seeded_random_weights() -> None:
    with torch.device("meta"):
        m = Selects("mask").eval()
    rep = rfscope.analyze(m, input_shape=(1, 3, 16, 16))
    assert rep.rf("d").size == (5, 5)
    assert all(p.device.type == "meta" for p in m.parameters())
    assert rep.trace_fallback and "seeded random input" in rep.trace_fallback


class ConvAfterItem(Selects):
    def forward(self, x: torch.Tensor) -> Any:
        y = self.c(x)
        return self.d(y * y.mean().item())


def test_macs_after_the_op_are_unknown() -> None:
    m = ConvAfterItem("item").eval()
    rep = rfscope.analyze(m, input_shape=(1, 3, 16, 16))
    sm = rep.summary
    assert sm.macs == 4 * 3 * 9 * 14 * 14  # the first conv; not the one after item()
    assert "d" in sm.macs_unknown
    assert sm.params_total == n_params(m)


class Istft(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(self.c(x)[:, 0], 64, window=torch.ones(64), return_complex=True)
        return torch.istft(spec, 64, window=torch.ones(64))


def test_op_without_meta_kernel_runs_on_real_tensors() -> None:
    """``istft`` has no meta kernel: shapes come from real tensors; nothing is data-dependent."""
    rep = rfscope.analyze(Istft(), example_inputs=(torch.rand(1, 1, 1024),), layout="NCT")
    assert rep.rf("c").size == (3,)
    assert rep.records["istft"].shape == (1, 1024)
    assert rep.trace_fallback and "istft (no meta kernel" in rep.trace_fallback
    assert not any(n.meta.get("rfscope_unknown") for n in rep.gm.graph.nodes)


class FailsOnRealToo(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[x > 0].view(7, -1, 3)


def test_real_pass_failure_is_one_line(tmp_path: Any) -> None:
    with pytest.raises(rfscope.TraceError, match="reran the shapes on real tensors"):
        rfscope.analyze(FailsOnRealToo(), input_shape=(1, 3, 8, 8))
    f = tmp_path / "bad.py"
    f.write_text("import torch, torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n"
                 "        return x[x > 0].view(7, -1, 3)\nmodel = M()\ninput_shape = (1, 3, 8, 8)\n")
    res = CliRunner().invoke(main, ["analyze", str(f)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("rfscope: error:")]
    assert len(lines) == 1 and "reran the shapes on real tensors" in lines[0], res.output
    assert "Traceback" not in res.output


# -- torchvision detectors and RAFT -----------------------------------------------------------

def _detector(name: str, size: int) -> tuple[nn.Module, tuple[int, ...]]:
    lm = load_model(f"torchvision:{name}")
    shape, _ = lm.inputs((1, 3, size, size))
    assert shape is not None
    rpn = getattr(lm.model, "rpn", None)
    if rpn is not None:  # fewer proposals: the heads after them cost less (they are unknown anyway)
        rpn._pre_nms_top_n["testing"] = rpn._post_nms_top_n["testing"] = 50
    return lm.model, shape


#: name, input size, a backbone/FPN node that must be exact (or global with an exact local RF), a head
#: node that must be unknown after the data-dependent op
#: (fasterrcnn_mobilenet_v3_large_fpn: test_detector_list_of_images_and_oracle)
DETECTORS = [
    ("maskrcnn_resnet50_fpn", 96, "backbone.fpn.layer_blocks.0", "roi_heads.mask_head"),
    ("retinanet_resnet50_fpn", 96, "backbone.fpn.layer_blocks.0", None),
    ("ssd300_vgg16", 300, "backbone.features", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,exact,head", DETECTORS, ids=[d[0] for d in DETECTORS])
def test_detector_backbone_exact_heads_unknown(name: str, size: int, exact: str, head: str | None) -> None:
    model, shape = _detector(name, size)
    rep = rfscope.analyze(model, input_shape=shape)
    assert rep.summary.params_total == n_params(model)
    assert rep.trace_path.startswith("make_fx")
    assert rep.trace_fallback and "shapes propagated on real tensors" in rep.trace_fallback
    r = rep.rf(exact)
    if r.status == "global":
        r = rep.rf(exact, local=True)
    assert r.status == "exact", (exact, r)
    dd = [rec for rec in rep.records.values() if rec.rf is not None and rec.rf.status == "unknown"
          and "data-dependent" in (rec.rf.reason or "")]
    assert dd, "nothing marked after the data-dependent ops"
    if head is not None:
        h = rep.rf(head)
        assert h.status == "unknown" and "data-dependent" in (h.reason or ""), h
        assert rep.summary.macs_unknown


def test_detector_list_of_images_and_oracle() -> None:
    """``model([image])``, the detectors' own input; the local RFs of the backbone's last block and of
    an FPN level agree with the gradient oracle run on the backbone alone with its SE gates removed
    (the transform resizes at scale 1)."""
    s = 384  # large enough for the borders of these RFs (595 and more) to show inside the input
    model, _ = _detector("fasterrcnn_mobilenet_v3_large_fpn", s)
    img = torch.rand(3, s, s, generator=torch.Generator().manual_seed(1))
    rep = rfscope.analyze(model, example_inputs=([img],))
    assert rep.input_shape == (3, s, s)
    assert rep.summary.params_total == n_params(model)
    assert rep.trace_path.startswith("make_fx") and "nonzero" in (rep.trace_fallback or "")
    head = rep.rf("roi_heads.box_head")
    assert head.status == "unknown" and "after nonzero (data-dependent shape)" in (head.reason or ""), head
    local = copy.deepcopy(model.get_submodule("backbone"))  # the local paths: squeeze-and-excitation gates removed
    for mod in list(local.modules()):
        for cn, c in list(mod.named_children()):
            if isinstance(c, tv.ops.misc.SqueezeExcitation):
                setattr(mod, cn, nn.Identity())
    orc = Oracle(local, (1, 3, s, s), ["body.16", "fpn.layer_blocks.0"], dtype=torch.float32, batch=3)
    for mine, theirs in (("backbone.body.16", "body.16"), ("backbone.fpn.layer_blocks.0", "fpn.layer_blocks.0")):
        r = rep.rf(mine, local=True)
        assert r.status == "exact", (mine, r)
        out = orc.out_size_of(theirs)
        probes = [[0, 0], [o - 1 for o in out], [o - 2 for o in out]]
        first, last1, last2 = orc.supports(probes, theirs)
        checks = 0
        w0 = r.window(probes[0])
        assert w0 is not None
        for a in range(2):
            if w0[a][1] < s:
                assert first[a][-1] == w0[a][1], (mine, a, first[a][-1], w0[a])
                checks += 1
        for idx, got in ((probes[1], last1), (probes[2], last2)):
            w = r.window(idx)
            assert w is not None
            for a in range(2):
                if w[a][0] >= 0:
                    assert got[a][0] == w[a][0], (mine, idx, a, got[a][0], w[a])
                    checks += 1
        assert checks >= 2, mine


def test_detector_by_name_on_the_cli_and_raft() -> None:
    res = CliRunner().invoke(main, ["analyze", "torchvision:fasterrcnn_mobilenet_v3_large_fpn", "--input-shape",
                                    "3,64,64", "--format", "json"])
    assert res.exit_code == 0, res.output[-2000:]
    raft = load_model("torchvision:raft_small").model
    rep = rfscope.analyze(raft, example_inputs=(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)))
    assert rep.trace_path == "torch.export"
    assert rep.rf("feature_encoder", local=True).status == "exact"  # instance norm: global, an exact local RF
    assert rep.summary.params_total == n_params(raft)


def test_swinunetr_numpy_on_a_shape_is_traced_by_the_fallback() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    m = nets.SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
                       num_heads=(1, 1, 1, 1)).eval()
    rep = rfscope.analyze(m, input_shape=(1, 1, 64, 64))
    assert rep.trace_path == "torch.export"
    assert rep.trace_fallback and "np.array" in rep.trace_fallback
    assert rep.summary.params_total == n_params(m)


class TopkHead(nn.Module):
    """A detector head's decoding in miniature (RetinaNet, FCOS): per-position scores flattened,
    the best picked by ``topk`` (or ordered by ``sort``/``argsort``, or ``argmax``), then gathered."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        s = self.c(x).permute(0, 2, 3, 1).flatten(1)  # N, H*W*A scores: a per-position table
        if self.op == "topk":
            i = s.topk(5, dim=1)[1]
        elif self.op == "sort":
            i = torch.sort(s, dim=1, descending=True)[1]
        elif self.op == "argsort":
            i = s.argsort(dim=1)
        else:
            i = s.argmax(dim=1, keepdim=True)
        return s, torch.gather(s, 1, i)


@pytest.mark.parametrize("trace", ["auto", "export"])
@pytest.mark.parametrize("op", ["topk", "sort", "argsort", "argmax"])
def test_selection_by_value_says_the_data_decides(op, trace):
    """What ``topk`` (``sort``, ``argsort``, ``argmax``) picks depends on the values, as with
    ``nonzero`` or NMS: the op and what it gathers are ``unknown`` with a reason that says so
    (it said "no rule for per-position inputs", or "no plugin"); the scores before it are exact."""
    rep = rfscope.analyze(TopkHead(op).eval(), example_inputs=(torch.rand(1, 3, 8, 8),), trace=trace)
    sel = next(r for r in rep.records.values() if op in r.target.lower())
    gathered = next(r for r in rep.records.values() if "gather" in r.target)
    what = "element" if op == "argmax" else "elements"
    for rec in (sel, gathered):
        states = rec.state if isinstance(rec.state, tuple) else (rec.state,)
        assert states and all(st.reason is not None for st in states)
        for st in states:
            assert st.reason.endswith(f"data-dependent selection: the data decides which {what} {op} picks"), st.reason
            assert "no rule" not in st.reason and "no plugin" not in st.reason
    outputs = rep.to_dict()["outputs"]
    assert outputs[0]["rf"]["status"] == "exact" and outputs[1]["rf"]["status"] == "unknown"
    assert outputs[1]["rf"]["reason"].endswith(f"the data decides which {what} {op} picks")
    assert not rep.unsupported


class Unpool(nn.Module):
    """SegNet's (and MONAI Quicknat's) decoder step: max pool with indices, then unpool with them."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x):
        y, i = self.pool(self.c(x))
        return nn.functional.max_unpool2d(y, i, 2) if self.functional else self.unpool(y, i)


@pytest.mark.parametrize("trace", ["auto", "export"])
@pytest.mark.parametrize("functional", [False, True])
def test_max_unpool_says_the_data_decides(functional, trace):
    """Where max unpooling puts each value is where its window's maximum was: ``unknown``, with a
    reason that says the data decides (it said "no plugin"); the pooled map before it is exact."""
    rep = rfscope.analyze(Unpool(functional).eval(), input_shape=(1, 3, 8, 8), trace=trace)
    out = rep.rf("output")
    assert out.status == "unknown" and out.reason.endswith(
        "the data decides where max_unpool puts each value (the pooling indices)"), out.reason
    assert not rep.unsupported
    assert rep.rf("c").status == "exact" and rep.rf("c").size == (3, 3)
