"""What rfscope hands back: RF reprs and the model's output leaves."""

from __future__ import annotations

import collections
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main


def test_rf_repr_of_a_window_wider_than_50k_samples_is_short() -> None:
    # 16 convs k=2 s=2: RF 65,536 samples; the exact window bit mask has ~20k decimal digits
    m = nn.Sequential(*[nn.Conv1d(1, 1, 2, stride=2) for _ in range(16)])
    rf = rfscope.analyze(m, input_shape=(1, 1, 65536)).rf("output")
    assert rf.size == (65536,)
    text = repr(rf)
    assert text == str(rf)
    assert text == "RF(status='exact', size=(65536,), stride=(65536,), padding=(0,))"
    assert "65535/2" in repr(rf.dims[0]) and len(repr(rf.dims[0])) < 200


def test_rf_repr_fractional_global_and_unknown() -> None:
    m = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1))
    rf = rfscope.analyze(m, input_shape=(1, 1, 16, 16)).rf("output")
    assert repr(rf) == "RF(status='exact', size=(5, 5), stride=(1, 1), padding=(1, 1), phases=(2, 2))"

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(x)
            return y * y.mean((2, 3), keepdim=True)

    g = rfscope.analyze(Gate(), input_shape=(1, 1, 8, 8)).rf("output")
    assert repr(g) == ("RF(status='global', size=(8, 8), stride=(1, 1), padding=(1, 1), "
                       "local=RF(status='exact', size=(3, 3), stride=(1, 1), padding=(1, 1)))")

    class Fft(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft2(x).real

    u = rfscope.analyze(Fft(), input_shape=(1, 1, 8, 8)).rf("output")
    assert repr(u).startswith("RF(status='unknown', reason='no plugin for ")


# -- every leaf of the return value ---------------------------------------------------

Out = collections.namedtuple("Out", ["logits", "feat"])


@dataclasses.dataclass
class DOut:
    logits: torch.Tensor
    feat: torch.Tensor
    extra: int = 0


class _Two(nn.Module):
    kind = "list"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.a(x)
        z = self.b(y)
        if self.kind == "list":
            return [y, z]
        if self.kind == "dict":
            return {"feat": y, "logits": z}
        if self.kind == "namedtuple":
            return Out(z, y)
        if self.kind == "dataclass":
            return DOut(z, feat=y)
        if self.kind == "nested":
            return (y, {"z": [z, 3]})
        return z.chunk(2, dim=1)


def _two(kind: str) -> nn.Module:
    m = _Two()
    m.kind = kind
    return m


FEAT = ([1, 4, 14, 14], [3, 3])
LOGITS = ([1, 4, 12, 12], [5, 5])
CASES = {
    "list": [("[0]", FEAT), ("[1]", LOGITS)],
    "dict": [("['feat']", FEAT), ("['logits']", LOGITS)],
    "namedtuple": [(".logits", LOGITS), (".feat", FEAT)],
    "dataclass": [(".logits", LOGITS), (".feat", FEAT), (".extra", None)],
    "nested": [("[0]", FEAT), ("[1]['z'][0]", LOGITS), ("[1]['z'][1]", None)],
    "chunk": [("[0]", ([1, 2, 12, 12], [5, 5])), ("[1]", ([1, 2, 12, 12], [5, 5]))],
}


def _leaves(d: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(o["path"], None if o["node"] is None else (o["shape"], o["rf"]["size"])) for o in d["outputs"]]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_json_outputs_list_every_leaf_with_its_path(kind: str) -> None:
    r = rfscope.analyze(_two(kind), input_shape=(1, 3, 16, 16), strict=True)
    d = json.loads(r.to_json())
    assert _leaves(d) == CASES[kind]
    assert r.unsupported == []
    first = CASES[kind][0][1]
    assert first is not None
    assert r.rf("output").size == tuple(first[1])  # the first tensor leaf
    for o in d["outputs"]:
        if o["node"] is not None and kind != "chunk":
            assert o["rf"] == next(n["rf"] for n in d["nodes"] if n["name"] == o["node"])


@pytest.mark.parametrize("kind", ["list", "dict", "namedtuple", "nested"])
def test_json_outputs_on_the_export_and_make_fx_paths(kind: str) -> None:
    for trace in ("export", "make_fx"):
        r = rfscope.analyze(_two(kind), input_shape=(1, 3, 16, 16), trace=trace, strict=True)
        assert _leaves(r.to_dict()) == CASES[kind], trace


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass"])
def test_record_constructor_is_not_an_unsupported_op(kind: str) -> None:
    r = rfscope.analyze(_two(kind), input_shape=(1, 3, 16, 16))
    assert r.unsupported == [] and r.errors == []
    assert not any("_rfscope_user" in n or "Out" in n for n in r.unsupported)
    ctor = next(x for x in r.records.values() if x.target_obj in (Out, DOut))
    assert isinstance(ctor.state, tuple) and len(ctor.state) == (2 if kind == "namedtuple" else 3)


def test_cli_json_outputs_of_a_namedtuple_model_under_strict(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        import collections
        import torch.nn as nn
        Out = collections.namedtuple("Out", ["logits", "feat"])
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Conv2d(3, 4, 3)
                self.b = nn.Conv2d(4, 4, 3)
            def forward(self, x):
                y = self.a(x)
                return Out(self.b(y), y)
        model = M()
        input_shape = (1, 3, 16, 16)
    """))
    res = CliRunner().invoke(main, ["analyze", str(f), "--strict", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [(o["path"], o["node"]) for o in d["outputs"]] == [(".logits", "b"), (".feat", "a")]
    assert d["output"] == "b" and d["unsupported"] == []


def test_rf_of_one_output_leaf_by_its_path() -> None:
    r = rfscope.analyze(_two("nested"), input_shape=(1, 3, 16, 16))
    assert r.rf("output").size == (3, 3)
    assert r.rf("output[0]").size == (3, 3)
    assert r.rf("output[1]['z'][0]").size == (5, 5)
    with pytest.raises(ValueError, match="not a tensor"):
        r.rf("output[1]['z'][1]")
    with pytest.raises(rfscope.report.UnknownNameError, match=r"its outputs are output\[0\], output\[1\]\['z'\]\[0\]"):
        r.rf("output[2]")
    n = rfscope.analyze(_two("namedtuple"), input_shape=(1, 3, 16, 16))
    assert n.rf("output").size == (5, 5) and n.rf("output.feat").size == (3, 3)


def test_dataclass_outputs_on_the_make_fx_path_depend_on_the_input() -> None:
    # make_fx follows outputs through PyTorch's pytree registry, which does not know DOut: its tensors
    # used to be recorded as constants (rf None: "does not depend on the input"), a silently wrong answer
    r = rfscope.analyze(_two("dataclass"), input_shape=(1, 3, 16, 16), trace="make_fx", strict=True)
    assert _leaves(r.to_dict()) == [("['logits']", LOGITS), ("['feat']", FEAT), ("['extra']", None)]
