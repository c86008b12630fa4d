"""How a Report shows itself: a one-line repr, an HTML table and an SVG diagram in notebooks,
and a DataFrame (issue 16, "Notebooks").

Expected values are worked out by hand from the layers, not read back from the report.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest
import torch
import torch.nn as nn

import rfscope
import rfscope.export.dot as dot


class Tiny(nn.Module):
    """conv1: 8*3*3*3 + 8 = 224 params, 8*27 MACs at 16x16 = 55,296; conv2 (stride 2):
    4*8*3*3 + 4 = 292 params, 4*72 MACs at 8x8 = 18,432; spare: 3*2 + 2 = 8 params, never
    called.  Output RF 3 + (3 - 1) = 5, stride 2, padding 1 + 1 = 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.spare = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


TINY_PARAMS = 224 + 292 + 8
TINY_UNUSED = 8


def _tiny() -> rfscope.Report:
    return rfscope.analyze(Tiny(), (1, 3, 16, 16))


def _global() -> rfscope.Report:
    """GroupNorm sees the whole input; the 5x5 conv after it is the only local path."""
    return rfscope.analyze(nn.Sequential(nn.GroupNorm(1, 3), nn.Conv2d(3, 4, 5, padding=2)), (1, 3, 12, 12))


# -- repr -------------------------------------------------------------------------------------
def test_repr_is_one_line_with_the_numbers() -> None:
    assert repr(_tiny()) == "<rfscope.Report Tiny input=1x3x16x16 nodes=3 params=524 MACs=73.7K output: 5x5>"


def test_repr_of_a_global_output_shows_its_local_rf() -> None:
    assert repr(_global()).endswith(" output: global (local 5x5)>")


def test_repr_of_resnet_is_short() -> None:
    tv = pytest.importorskip("torchvision")
    r = rfscope.analyze(tv.models.resnet18(), (1, 3, 224, 224))
    text = repr(r)
    # torchvision's 11,689,512 parameters; the ResNet paper's 1.8 G multiply-adds ("FLOPs")
    assert text == "<rfscope.Report ResNet input=1x3x224x224 nodes=69 params=11.7M MACs=1.82G output: global>"
    assert "\n" not in text and len(text) < 120
    assert str(r) == text


def test_repr_never_raises() -> None:
    r = _tiny()
    r.records = None  # type: ignore[assignment]
    assert repr(r) == "<rfscope.Report (AttributeError while describing it)>"
    assert r._repr_html_().startswith("<pre>&lt;rfscope.Report")
    assert r._repr_mimebundle_() is None


# -- HTML table ---------------------------------------------------------------------------------
class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self._cell: list[str] | None = None
        self._style = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._style = [], dict(attrs).get("style") or ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell), self._style))
            self._cell = None


def _cells(html: str) -> list[list[tuple[str, str]]]:
    p = _Cells()
    p.feed(html)
    return p.rows


def test_html_is_the_table_well_formed_numbers_right_aligned() -> None:
    r = _tiny()
    html = r._repr_html_()
    ET.fromstring(f"<root>{html}</root>")  # well-formed
    rows = _cells(html)
    header = [c for c, _ in rows[0]]
    assert header[:5] == ["layer", "op", "output shape", "params", "MACs"]
    body = {row[0][0]: row for row in rows[1:]}
    assert list(body) == ["x", "conv1", "act", "conv2"]
    params = header.index("params")
    assert body["conv1"][params][0] == "224" and body["conv2"][params][0] == "292"
    assert "right" in body["conv1"][params][1] and "left" in body["conv1"][0][1]
    assert body["conv2"][header.index("MACs")][0] == "18.4K"
    assert "params 524" in html  # the summary line under the table


def test_html_escapes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _tiny()
    text = r.table().replace("conv1", "<b>&c1", 1)
    monkeypatch.setattr(type(r), "table", lambda self, nodes=None: text)
    html = r._repr_html_()
    assert "<b>" not in html and "&lt;b&gt;&amp;c1" in html
    ET.fromstring(f"<root>{html}</root>")


def test_html_lists_every_row_of_a_large_model() -> None:
    tv = pytest.importorskip("torchvision")
    r = rfscope.analyze(tv.models.resnet18(), (1, 3, 224, 224))
    html = r._repr_html_()
    ET.fromstring(f"<root>{html}</root>")
    labels = [row[0][0] for row in _cells(html)[1:]]
    expected = ["x", "conv1", "bn1", "relu", "maxpool"] + [
        f"layer{i}.{b}.{m}" for i in range(1, 5) for b in range(2) for m in ("conv1", "bn1", "relu", "conv2", "bn2")
    ]
    assert set(expected) <= set(labels)
    assert labels[-1] == "fc"


# -- diagram in notebooks -----------------------------------------------------------------------
def test_mimebundle_has_the_diagram_collapsed() -> None:
    tv = pytest.importorskip("torchvision")
    if dot.find_renderer() is None:
        pytest.skip("no renderer (graphviz-pure is a dependency: reinstall rfscope)")
    r = rfscope.analyze(tv.models.resnet18(), (1, 3, 224, 224))
    b = r._repr_mimebundle_()
    assert b is not None
    svg = b["image/svg+xml"]
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    # collapsed to one box per residual block: the blocks show, their layers do not
    assert "layer4.1" in svg and "layer4.1.conv1" not in svg
    assert svg in b["text/html"] and r._repr_html_() in b["text/html"]


def test_small_model_diagram_shows_every_node() -> None:
    r = _tiny()
    assert r._notebook_depth() is None


def _no_renderer(path: Any = None) -> None:
    return None


def _bad_override(path: Any = None) -> Any:
    raise dot.RendererNotFoundError("RFSCOPE_DOT names nothing runnable")


def _failing(path: Any = None) -> dot.Renderer:
    return dot.Renderer(sys.executable, "PATH")  # python -Tsvg: exits non-zero, writes no SVG


@pytest.mark.parametrize("find", [_no_renderer, _bad_override, _failing])
def test_no_working_renderer_falls_back_to_the_table(monkeypatch: pytest.MonkeyPatch, find: Any) -> None:
    r = _tiny()
    monkeypatch.setattr(dot, "find_renderer", find)
    assert r._repr_mimebundle_() is None  # the notebook then shows _repr_html_
    assert "<table" in r._repr_html_()


def test_a_failing_diagram_falls_back_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _tiny()
    monkeypatch.setattr(type(r), "to_dot", lambda self, depth=None, rankdir="TB": 1 / 0)
    assert r._repr_mimebundle_() is None
    assert "<table" in r._repr_html_()


# -- DataFrame ----------------------------------------------------------------------------------
def test_dataframe_rows_columns_dtypes() -> None:
    pytest.importorskip("pandas")
    r = _tiny()
    df = r.to_dataframe()
    assert list(df["layer"]) == ["x", "conv1", "act", "conv2"]
    assert str(df["params"].dtype) == "Int64" and str(df["macs"].dtype) == "Int64"
    assert str(df["rf_stride_h"].dtype) == "float64" and str(df["rf_size_w"].dtype) == "Int64"
    assert df["params"].sum() == TINY_PARAMS - TINY_UNUSED == r.summary.params_total - r.summary.params_unused
    assert r.summary.params_total == sum(p.numel() for p in Tiny().parameters())
    conv2 = df.set_index("layer").loc["conv2"]
    assert (conv2["params"], conv2["macs"]) == (292, 18_432)
    assert (conv2["rf_size_h"], conv2["rf_size_w"], conv2["rf_stride_h"], conv2["rf_padding_w"]) == (5, 5, 2.0, 2.0)
    assert conv2["rf_status"] == "exact" and conv2["shape"] == (1, 4, 8, 8)


def test_dataframe_global_rows() -> None:
    pytest.importorskip("pandas")
    df = _global().to_dataframe().set_index("layer")
    row = df.loc["1"]  # the conv after the GroupNorm
    assert row["rf_status"] == "global"
    assert row["rf_size_h"] is pytest.importorskip("pandas").NA
    assert (row["rf_local_size_h"], row["rf_local_size_w"]) == (5, 5)


def test_dataframe_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install pandas") as e:
        _tiny().to_dataframe()
    assert "\n" not in str(e.value)
