"""Every JSON rfscope writes validates against its schema in docs/ (issue 16, "JSON").

``docs/report.schema.json`` describes analyze's JSON (``report.to_dict()``, ``--format json``),
``docs/erf.schema.json`` the ERF probe's ``erf.json``.  The schemas forbid fields they do not
describe, so a new field fails here until the schema documents it.
"""

from __future__ import annotations

import collections
import json
import platform
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from test_global_merge import PanLike  # a global RF whose local paths are misaligned

import rfscope
from rfscope.cli import main

jsonschema = pytest.importorskip("jsonschema")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _validator(name: str) -> Any:
    schema = json.loads((DOCS / name).read_text())
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)  # the schema itself is valid draft 2020-12
    return cls(schema)


REPORT = _validator("report.schema.json")
ERF = _validator("erf.schema.json")


def _valid(validator: Any, d: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


# -- models ---------------------------------------------------------------------------------
class PlainCNN(nn.Module):
    """Convs, a gridding dilated pair (a design warning), a strided transposed conv (phase sizes),
    an unused layer (params_unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dil = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.Conv2d(8, 8, 3, padding=2, dilation=2))
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2)
        self.unused = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dil(self.stem(x)))


Out = collections.namedtuple("Out", "logits feat")


class NamedOut(nn.Module):
    """Returns a namedtuple: a global leaf with no local path, and an exact one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Out:
        f = self.conv(x)
        return Out(self.fc(f.mean((2, 3))), f)


class Separable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def _dead() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    for p in net.parameters():
        nn.init.zeros_(p)
    return net


def test_plain_cnn() -> None:
    d = rfscope.analyze(PlainCNN(), (1, 3, 32, 32)).to_dict()
    _valid(REPORT, d)
    # what the model makes sure the schema's optional parts were exercised
    assert d["warnings"] and d["summary"]["params_unused"] == 5 * 5 + 5
    assert any("phase_sizes" in (n["rf"] or {}) for n in d["nodes"])


def test_global_with_misaligned_local_paths() -> None:
    d = rfscope.analyze(PanLike(), (1, 3, 32, 32)).to_dict()
    _valid(REPORT, d)
    rf = d["outputs"][0]["rf"]
    assert rf["status"] == "global" and rf["local"]["status"] == "unknown"


def test_findings_from_check_init() -> None:
    d = rfscope.analyze(_dead(), (1, 3, 16, 16), check_init=True).to_dict()
    _valid(REPORT, d)
    assert d["findings"] and {f["severity"] for f in d["findings"]} <= {"error", "warning", "info"}


def test_namedtuple_outputs_and_separable_blocks() -> None:
    d = rfscope.analyze(NamedOut(), (1, 3, 16, 16)).to_dict()
    _valid(REPORT, d)
    assert [o["path"] for o in d["outputs"]] == [".logits", ".feat"]
    assert d["outputs"][0]["rf"]["local"] is None  # global pooling: no local path
    d = rfscope.analyze(Separable(), (1, 8, 16, 16)).to_dict()
    _valid(REPORT, d)
    assert len(d["separable_blocks"]) == 1


def test_export_path() -> None:
    d = rfscope.analyze(PlainCNN(), (1, 3, 32, 32), trace="export").to_dict()
    _valid(REPORT, d)
    assert d["trace"] != "symbolic_trace" and "trace_fallback" in d
    assert any(n["op"] == "get_attr" for n in d["nodes"])


def test_cli_json(tmp_path: Path) -> None:
    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\n"
                 "model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))\n"
                 "input_shape = (1, 3, 16, 16)\n")
    for extra in ([], ["--node", "0"]):
        r = CliRunner().invoke(main, ["analyze", str(f), "--format", "json", *extra])
        assert r.exit_code == 0, r.output
        _valid(REPORT, json.loads(r.output))


def test_versions_and_schema_version() -> None:
    d = rfscope.analyze(nn.Conv2d(1, 1, 3), (1, 1, 8, 8)).to_dict()
    assert list(d)[:2] == ["schema_version", "versions"]
    assert d["schema_version"] == "1"
    assert d["versions"] == {"rfscope": rfscope.__version__, "torch": torch.__version__,
                             "python": platform.python_version()}
    schema = json.loads((DOCS / "report.schema.json").read_text())
    assert schema["properties"]["schema_version"]["const"] == d["schema_version"]


def test_schema_rejects_what_it_does_not_describe() -> None:
    """The schema is strict: an undocumented field or a wrong type fails."""
    d = rfscope.analyze(nn.Conv2d(1, 1, 3), (1, 1, 8, 8)).to_dict()
    assert not REPORT.is_valid({**d, "surprise": 1})
    bad = json.loads(json.dumps(d))
    bad["outputs"][0]["rf"]["status"] = "approximate"
    assert not REPORT.is_valid(bad)
    bad = json.loads(json.dumps(d))
    del bad["versions"]["torch"]
    assert not REPORT.is_valid(bad)


# -- erf.json -------------------------------------------------------------------------------
def test_erf_json_batch_convention_and_schema(tmp_path: Path) -> None:
    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\n"
                 "model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))\n"
                 "input_shape = (1, 3, 16, 16)\n")
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["probe", str(f), "--mode", "erf", "--node", "2", "--samples", "3",
                                  "--device", "cpu", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "erf.json").read_text())
    _valid(ERF, d)
    # batch 1, like analyze's JSON for the same model; the sample count in its own field
    a = json.loads(CliRunner().invoke(main, ["analyze", str(f), "--format", "json"]).output)
    assert d["input_shape"] == a["input_shape"] == [1, 3, 16, 16]
    assert d["samples"] == 3
    assert d["schema_version"] == a["schema_version"] and d["versions"] == a["versions"]


def test_erf_json_global_node_validates() -> None:
    from rfscope.probe import erf

    r = erf(PanLike(), input_shape=(1, 3, 16, 16), samples=2, device="cpu", progress=False)
    d = json.loads(json.dumps(r.to_dict()))
    _valid(ERF, d)
    assert d["rf"]["status"] == "global" and d["input_shape"] == [1, 3, 16, 16]
