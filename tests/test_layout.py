"""Input layouts (issue 13, items 1 and 2): declared or inferred, token ids, waveforms, channels-last,
feature vectors (RF n/a), keyword inputs, and unbatched shapes.

Expected numbers are derived by hand in the comments (r' = r + (k-1) j, j' = j s) or measured by the
gradient oracle (tests/oracle.py), never taken from rfscope.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from oracle import Oracle  # tests/conftest.py puts tests/ on sys.path
from test_bad_input import _one_line_error

import rfscope
from rfscope.cli import main
from rfscope.pipeline import AnalysisInputError


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["analyze", *args])
    return res.exit_code, res.output


def _write(tmp_path: Path, body: str, name: str = "m.py") -> str:
    p = tmp_path / name
    p.write_text("import torch\nimport torch.nn as nn\n" + textwrap.dedent(body), encoding="utf-8")
    return str(p)


def _check_units(rf: rfscope.RF, orc: Oracle, units: list[int]) -> None:
    """Every probed unit sees exactly the pixels the oracle measures (1-D)."""
    for u, sup in zip(units, orc.supports([(u,) for u in units]), strict=True):
        assert list(rf.pixels((u,))[0]) == sup[0], u


# -- feature vectors: no positional axis -------------------------------------------------------------

ZERO_MLP = """
model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
for p in model.parameters():
    nn.init.zeros_(p)
input_shape = (1, 32)
"""


def test_zero_mlp_check_init_cli(tmp_path):
    code, out = _cli(_write(tmp_path, ZERO_MLP), "--check-init")
    assert code == 1, out
    assert "error: symmetric-units" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("0 ", "2 ", "4 "))]
    assert len(rows) == 3 and all(r[-4:] == ["n/a"] * 4 for r in rows), out
    # params: 32*64+64 + 64*64+64 + 64*10+10, counted by hand
    assert "params 6,922" in out


def test_feature_vector_json_and_api(tmp_path):
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    rep = rfscope.analyze(net, input_shape=(1, 32))
    assert rep.layout == "ND" and rep.input_size == ()
    d = rep.to_dict()
    assert d["layout"] == "ND"
    lin = [n for n in d["nodes"] if n["target"] == "Linear"]
    assert [n["rf"] for n in lin] == [None, None]
    assert [n["macs"] for n in lin] == [32 * 64, 64 * 10]
    with pytest.raises(ValueError, match="n/a.*no positional axis"):
        rep.rf("2")
    # the same from the CLI: one size, no batch dim
    code, out = _cli(_write(tmp_path, "model = nn.Sequential(nn.Linear(32, 4))\n"), "--input-shape", "32",
                     "--format", "json")
    assert code == 0, out
    d = json.loads(out)
    assert d["input_shape"] == [1, 32] and d["layout"] == "ND"


def test_float_2d_is_an_input_not_a_constant():
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    rep = rfscope.analyze(net, example_inputs=(torch.zeros(2, 8),))
    assert [r.target for r in rep.layers()] == ["input", "Linear", "ReLU"]


# -- token ids ----------------------------------------------------------------------------------------


class TextCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.c1 = nn.Conv1d(16, 16, 3)
        self.c2 = nn.Conv1d(16, 16, 5, stride=2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(self.emb(ids).transpose(1, 2)))


@pytest.mark.parametrize("trace", ["auto", "export"])
def test_token_cnn_rf_in_tokens(trace):
    # c1: r=3, j=1; c2 (k=5, s=2): r = 3 + 4*1 = 7, j = 2, no padding: unit i sees tokens 2i..2i+6
    rep = rfscope.analyze(TextCNN(), example_inputs=(torch.zeros(1, 64, dtype=torch.long),), trace=trace)
    assert rep.layout == "NL" and rep.input_size == (64,)
    rf = rep.rf("output")
    assert (rf.status, rf.size, rf.stride, rf.padding) == ("exact", (7,), (2,), (0,))
    assert rf.window((5,)) == ((10, 16),)
    assert rep.rf("emb").size == (1,)  # one token per position


def test_token_cnn_oracle_after_the_embedding():
    # the oracle needs a float input: the conv stack after the embedding, on (1, 16, 64) float
    m = TextCNN()
    stack = nn.Sequential(m.c1, m.c2)
    rf = rfscope.analyze(m, input_shape=(1, 64), layout="NL").rf("output")
    orc = Oracle(stack, (1, 16, 64), batch=4)
    _check_units(rf, orc, [0, 1, 13, 28])


def test_token_cnn_cli(tmp_path):
    path = _write(tmp_path, "from tests.test_layout import TextCNN\nmodel = TextCNN()\n")
    code, out = _cli(path, "--input-shape", "64", "--layout", "NL", "--format", "json", "--node", "c2")
    assert code == 0, out
    d = json.loads(out)
    assert d["layout"] == "NL" and d["input_shape"] == [1, 64]
    (node,) = d["nodes"]
    assert node["rf"]["size"] == [7] and node["rf"]["stride"] == [2]


def test_integer_input_with_3_dims_is_an_input():
    class Ids3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (N, H, W) ids
            return self.conv(self.emb(ids).permute(0, 3, 1, 2))

    rep = rfscope.analyze(Ids3(), example_inputs=(torch.zeros(1, 8, 8, dtype=torch.long),), layout="NHW")
    assert rep.rf("output").size == (3, 3) and rep.input_size == (8, 8)


@pytest.mark.parametrize("trace", ["auto", "export"])
def test_complex_input_is_an_input(trace):
    class Spec(nn.Module):  # a complex spectrogram's real and imaginary parts as two channels
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv1d(2, 4, 3, stride=2)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([z.real, torch.imag(z)], 1))

    rep = rfscope.analyze(Spec(), example_inputs=(torch.zeros(1, 1, 32, dtype=torch.complex64),), trace=trace)
    rf = rep.rf("output")  # k=3, s=2: r=3, j=2
    assert (rf.status, rf.size, rf.stride) == ("exact", (3,), (2,)) and rep.layout == "NCL"


# -- waveforms ----------------------------------------------------------------------------------------

KERNELS, STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


class FeatureEncoder(nn.Module):
    """wav2vec 2.0's conv feature encoder on a (N, T) waveform (channel dim added inside)."""

    def __init__(self, channels: int = 4, add_channel: bool = True) -> None:
        super().__init__()
        self.add_channel = add_channel
        self.convs = nn.ModuleList(nn.Conv1d(1 if i == 0 else channels, channels, k, stride=s, bias=False)
                                   for i, (k, s) in enumerate(zip(KERNELS, STRIDES, strict=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x[:, None]
        for c in self.convs:
            x = F.gelu(c(x))
        return x


def test_wav2vec_feature_encoder_400_320():
    # by hand: j = 5, 10, 20, 40, 80, 160, 320; r = 10, +2*5, +2*10, +2*20, +2*40, +1*80, +1*160 = 400
    rep = rfscope.analyze(FeatureEncoder(), input_shape=(1, 16000), layout="NT")
    rf = rep.rf("output")
    assert (rf.status, rf.size, rf.stride, rf.padding) == ("exact", (400,), (320,), (0,))
    assert rep.input_size == (16000,) and rep.layout == "NT"
    # the oracle on the same convs with the channel dim given: (1, 1, 16000)
    orc = Oracle(FeatureEncoder(add_channel=False), (1, 1, 16000), batch=4)
    _check_units(rf, orc, [0, 1, 24, 48])
    assert orc.out_size == (49,) == rep.records[rep.output_node].shape[2:]


def test_waveform_without_layout_is_a_feature_vector():
    rep = rfscope.analyze(FeatureEncoder(), input_shape=(1, 16000))  # 2-D float: ND, documented
    assert rep.layout == "ND" and rep.input_size == ()
    with pytest.raises(ValueError, match="n/a"):
        rep.rf("output")


def test_hf_wav2vec2_default_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).eval()
    rep = rfscope.analyze(model, example_inputs=(torch.zeros(1, 16000),), layout="NT")
    rf = rep.rf("feature_extractor")
    assert rf.status == "global"  # GroupNorm over time in the first conv layer
    assert (rf.local.size, rf.local.stride) == ((400,), (320,))


def test_whisper_encoder_front_end():
    # conv1 k=3 p=1: r=3, j=1; conv2 k=3 s=2 p=1: r = 3 + 2*1 = 5, j = 2, P = 1 + 1*1 = 2
    transformers = pytest.importorskip("transformers")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    enc = WhisperEncoder(transformers.WhisperConfig()).eval()
    rep = rfscope.analyze(enc, example_inputs=(torch.zeros(1, 80, 3000),), layout="NCT")
    rf = rep.rf("conv2")
    assert (rf.status, rf.size, rf.stride, rf.padding) == ("exact", (5,), (2,), (2,))
    twin = nn.Sequential(nn.Conv1d(80, 8, 3, padding=1), nn.GELU(), nn.Conv1d(8, 8, 3, stride=2, padding=1))
    rf2 = rfscope.analyze(twin, input_shape=(1, 80, 3000), layout="NCT").rf("output")
    assert (rf2.size, rf2.stride, rf2.padding) == (rf.size, rf.stride, rf.padding)
    _check_units(rf2, Oracle(twin, (1, 80, 3000), batch=3), [1, 700, 1498])


# -- channels-last --------------------------------------------------------------------------------------


def _body() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, (3, 5), dilation=(1, 2)))


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 3, 1, 2))


def test_nhwc_same_as_nchw_twin_and_oracle():
    torch.manual_seed(0)
    cl = ChannelsLast()
    a = rfscope.analyze(cl, input_shape=(1, 32, 48, 3), layout="NHWC")
    b = rfscope.analyze(cl.body, input_shape=(1, 3, 32, 48), layout="NCHW")
    assert a.input_size == b.input_size == (32, 48)
    ra, rb = a.rf("output"), b.rf("output")
    assert (ra.status, ra.size, ra.stride, ra.padding) == (rb.status, rb.size, rb.stride, rb.padding)
    orc = Oracle(cl.body, (1, 3, 32, 48), batch=3)
    units = [(1, 1), (3, 2), (5, 3)]  # the output is 6x4; unit 0 reaches the padding (-1), which the oracle clips
    for u, sup in zip(units, orc.supports(units), strict=True):
        assert tuple(list(p) for p in ra.pixels(u)) == sup, u


def test_nhwc_declared_wrongly_fed_to_conv_is_global_not_local():
    # a (1, H=32, W=16, C=3) input fed straight to Conv2d(32, ...): PyTorch takes H as the channels,
    # so every unit mixes all 32 rows (global along H) and sees 3 columns of W (k=3, p=1)
    rep = rfscope.analyze(nn.Conv2d(32, 4, 3, padding=1), input_shape=(1, 32, 16, 3), layout="NHWC")
    rf = rep.rf("output")
    assert rf.status == "global" and rf.size == (32, 3)


# -- keyword and several inputs -------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.img = nn.Conv2d(3, 4, 5)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor:
        y = self.conv(self.emb(input_ids).transpose(1, 2)) * scale
        if pixel_values is not None:
            return y, self.img(pixel_values)
        return y


def test_keyword_inputs_and_a_layout_per_input():
    ids = torch.zeros(1, 20, dtype=torch.long)
    rep = rfscope.analyze(TwoInputs(), example_inputs={"input_ids": ids})
    assert rep.rf("conv").size == (3,) and rep.layout == "NL"
    # two inputs with different positional axes: RFs along the first one's; the other is unknown, with why
    rep = rfscope.analyze(TwoInputs(), example_inputs={"input_ids": ids, "pixel_values": torch.zeros(1, 3, 9, 9)},
                          layout={"input_ids": "NL", "pixel_values": "NCHW"})
    assert rep.rf("output[0]").size == (3,)
    img = rep.rf("output[1]")
    assert img.status == "unknown" and "first input" in img.reason


def test_second_input_with_other_extents_is_unknown_with_the_reason():
    class Add(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.c(x) + y

    rep = rfscope.analyze(Add(), example_inputs=(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 6, 6)))
    rf = rep.rf("output")
    assert rf.status == "unknown" and "input 'y' has positional axes H=6, W=6" in rf.reason
    assert rep.rf("c").size == (3, 3)


def test_timestep_path_never_makes_the_image_path_unknown():
    class Cond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.t = nn.Linear(1, 4)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e = self.t(torch.special.erf(t[:, None]))  # erf has no plugin; t has no positional axis
            return self.c(x) + e[:, :, None, None]

    rep = rfscope.analyze(Cond(), example_inputs=(torch.zeros(1, 3, 8, 8), torch.zeros(1)))
    rf = rep.rf("output")
    assert (rf.status, rf.size) == ("exact", (3, 3))
    assert rep.unsupported == [] and rep.records["t"].rf is None  # layout N: an input, with no RF
    assert "n/a" in next(ln for ln in rep.table().splitlines() if ln.startswith("t ") and "Linear" in ln)


@pytest.mark.parametrize("layout,needle", [
    ("NCH", "3 letters but the input has 4 dims"),
    ("NCHX", "unknown letter 'X'"),
    ("NNHW", "two Ns"),
    ("CHWN1", "unknown letter '1'"),
    ("CHW", "has no N"),
    (("NCHW", "NL"), "2 entries but there are 1 inputs"),
    (7, "must be a string such as 'NCHW'"),
])
def test_bad_layouts(layout, needle):
    with pytest.raises(AnalysisInputError, match=needle) as e:
        rfscope.analyze(nn.Conv2d(3, 4, 3), input_shape=(1, 3, 8, 8), layout=layout)
    assert "\n" not in str(e.value)


def test_layout_for_an_input_that_is_not_a_tensor():
    with pytest.raises(AnalysisInputError, match="'scale', which is not a tensor"):
        rfscope.analyze(TwoInputs(), example_inputs={"input_ids": torch.zeros(1, 9, dtype=torch.long),
                                                     "scale": 2.0}, layout={"scale": "NL"})
    with pytest.raises(AnalysisInputError, match="not a positional parameter"):
        rfscope.analyze(TwoInputs(), example_inputs={"ids": torch.zeros(1, 9, dtype=torch.long)})


def test_bad_layout_cli(tmp_path):
    path = _write(tmp_path, "model = nn.Conv2d(3, 4, 3)\ninput_shape = (1, 3, 8, 8)\n")
    _one_line_error(*_cli(path, "--layout", "NCQW"), "unknown letter 'Q'")
    _one_line_error(*_cli(path, "--layout", "NCHWN"), "two Ns")
    _one_line_error(*_cli(path, "--layout", "NCW"), "3 letters")


# -- unbatched shapes ------------------------------------------------------------------------------------


def test_unbatched_shape_with_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU())
    with pytest.raises(AnalysisInputError, match=r"missing its batch dim \(layer '0' \(Conv2d\) gets the 3-d "
                       r"input \(3, 224, 224\).*\(1, 3, 224, 224\)") as e:
        rfscope.analyze(net, input_shape=(3, 224, 224))
    assert "\n" not in str(e.value) and "expects 64 input channels" not in str(e.value)


def test_unbatched_shape_that_runs_as_one_sample():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(AnalysisInputError, match=r"layer '0' \(Conv2d\).*unbatched.*\(1, 3, 32, 32\)"):
        rfscope.analyze(net, input_shape=(3, 32, 32))
    assert rfscope.analyze(net, input_shape=(1, 3, 32, 32)).rf("2").size == (5, 5)  # 3 + 2


def test_unbatched_shape_cli(tmp_path):
    body = "model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))\ninput_shape = (3, 32, 32)\n"
    _one_line_error(*_cli(_write(tmp_path, body)), "missing its batch dim", "(1, 3, 32, 32)")
    code, out = _cli(_write(tmp_path, body), "--input-shape", "3,32,32")  # --input-shape has no batch dim
    assert code == 0, out


def test_help_says_where_the_batch_dim_goes():
    res = CliRunner().invoke(main, ["analyze", "--help"])
    text = " ".join(res.output.split())
    assert "WITHOUT the batch dim" in text and "input_shape = (1, 3, 224, 224)" in text and "--layout" in text
