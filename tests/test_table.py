"""The per-layer table (issue 16, "ViT attention is invisible" and "The table at scale"): every
module call is a row and a valid ``--node``; ``--depth``, ``--columns``, ``--format``, ``--quiet``;
numbers right-aligned; the terminal's width; a global RF's local part in the RF column.

Parameter counts come from PyTorch (``sum(p.numel() ...)``), RFs are worked out by hand.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner, Result

import rfscope
from rfscope.cli import main
from rfscope.passes.counts import fmt_count

tv = pytest.importorskip("torchvision")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["analyze", *args], env=env)


def numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def vit() -> tuple[nn.Module, rfscope.Report]:
    with torch.device("meta"):
        model = tv.models.vit_b_16()
    return model, rfscope.analyze(model, (1, 3, 224, 224))


# -- every module call is a row --------------------------------------------------------------------
def test_vit_has_a_self_attention_row_per_layer(vit: tuple[nn.Module, rfscope.Report]) -> None:
    model, rep = vit
    rows = {row.label: row for row in rep.rows()}
    layers = list(model.encoder.layers.named_children())
    assert len(layers) == 12
    for name, layer in layers:
        row = rows[f"encoder.layers.{name}.self_attention"]
        assert row.op == "MultiheadAttention" and row.params == numel(layer.self_attention)
        assert row.shape == (1, 197, 768)  # 14*14 patches + the class token, ViT-B's width
    text = rep.table()
    assert sum(line.startswith("encoder.layers.encoder_layer_") and ".self_attention " in line
               for line in text.splitlines()) == 12


@pytest.mark.parametrize("depth", [None, 1, 2, 3, 4])
def test_vit_rows_add_up_to_the_parameters(vit: tuple[nn.Module, rfscope.Report], depth: int | None) -> None:
    model, rep = vit
    total = numel(model)  # 86,567,656
    assert rep.summary.params_total == total
    assert sum(row.params or 0 for row in rep.rows(depth=depth)) == total


def test_vit_depth_3_is_one_row_per_encoder_layer(vit: tuple[nn.Module, rfscope.Report]) -> None:
    model, rep = vit
    rows = {row.label: row for row in rep.rows(depth=3)}
    for name, layer in model.encoder.layers.named_children():
        assert rows[f"encoder.layers.{name}"].params == numel(layer)
    assert not any(".self_attention" in label for label in rows)


def test_node_self_attention_on_the_command_line(vit: tuple[nn.Module, rfscope.Report]) -> None:
    model, rep = vit
    path = "encoder.layers.encoder_layer_0.self_attention"
    res = run("torchvision:vit_b_16", "--node", path, "--format", "csv")
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(io.StringIO(res.output)))
    assert row["layer"] == path and int(row["params"]) == numel(model.encoder.layers[0].self_attention)
    # attention mixes every token: the output sees the whole image
    assert row["status"] == "global" and rep.rf(path).status == "global"
    res = run("torchvision:vit_b_16", "--node", path, "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["modules"][path]["rf"]["status"] == "global"


def test_node_container_shows_its_subtree() -> None:
    model = tv.models.resnet18()
    res = run("torchvision:resnet18", "--node", "layer1", "--format", "csv")
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(io.StringIO(res.output)))
    assert row["layer"] == "layer1" and row["op"] == "Sequential"
    assert int(row["params"]) == numel(model.layer1)
    # stem 11/4/5, then four 3x3 convs at stride 4: 11 + 4*2*4 = 43
    assert row["RF size"] == "43x43" and row["stride"] == "4x4" and row["padding"] == "21x21"
    res = run("torchvision:resnet18", "--node", "layer1")
    line = next(ln for ln in res.output.splitlines() if ln.startswith("layer1 "))
    assert fmt_count(numel(model.layer1)) in line.split()


# -- options ---------------------------------------------------------------------------------------
def test_depth_1_resnet18(tmp_path: Path) -> None:
    model = tv.models.resnet18()
    res = run("torchvision:resnet18", "--depth", "1", "--format", "csv", "--diagram", str(tmp_path / "r.dot"))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    children = dict(model.named_children())
    labels = [r["layer"] for r in rows]
    assert labels[0] == "x" and [lb for lb in labels[1:] if lb in children] == list(children)
    assert sum(int(r["params"] or 0) for r in rows) == numel(model)
    for r in rows:
        if r["layer"] in children:
            assert int(r["params"] or 0) == numel(children[r["layer"]])


def test_columns_choose_and_order() -> None:
    res = run("torchvision:resnet18", "--columns", "params,layer,RF size")
    assert res.exit_code == 0, res.output
    head = res.output.splitlines()[0].split()
    assert head == ["params", "layer", "RF", "size"]
    res = run("torchvision:resnet18", "--columns", "layer,bogus")
    assert res.exit_code == 2 and "bogus" in res.output and "status" in res.output


def test_format_markdown_and_html() -> None:
    res = run("torchvision:resnet18", "--format", "markdown")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "| layer | op | output shape | params | MACs | RF size | stride | padding | status |"
    assert lines[1].startswith("|:---|") and "---:" in lines[1]
    assert any(ln.startswith("| layer1.0.conv1 | Conv2d |") for ln in lines)
    res = run("torchvision:resnet18", "--format", "html")
    assert res.exit_code == 0, res.output
    root = ET.fromstring(f"<root>{res.output}</root>")
    cells = [[c.text for c in tr] for tr in root.iter("tr")]
    assert cells[0][0] == "layer" and "layer4.1.conv2" in [c[0] for c in cells]


def test_format_json_is_the_report(tmp_path: Path) -> None:
    res = run("torchvision:resnet18", "--format", "json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    with torch.device("meta"):
        want = rfscope.analyze(tv.models.resnet18(), (1, 3, 224, 224)).to_dict()
    assert got["nodes"] == want["nodes"] and got["modules"] == want["modules"] and set(got) == set(want)


def _net(tmp_path: Path) -> str:
    f = tmp_path / "g.py"
    f.write_text("import torch\nimport torch.nn as nn\n"
                 "class Net(nn.Module):\n"
                 "    def __init__(self):\n"
                 "        super().__init__()\n"
                 "        self.norm = nn.GroupNorm(1, 3)\n"
                 "        self.conv = nn.Conv2d(3, 4, 5, padding=2)\n"
                 "        self.post = nn.Conv2d(4, 4, 3)\n"
                 "    def forward(self, x):\n"
                 "        y = self.conv(self.norm(x))\n"
                 "        return y, self.post(torch.cumsum(y, dim=-1))\n"
                 "model = Net()\ninput_shape = (1, 3, 12, 12)\n")
    return str(f)


def test_global_rows_show_the_local_rf_and_unknown_is_a_question_mark(tmp_path: Path) -> None:
    res = run(_net(tmp_path), "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = {r["layer"]: r for r in csv.DictReader(io.StringIO(res.output))}
    # GroupNorm sees the whole input; the 5x5 conv after it is the only local path
    assert rows["conv"]["RF size"] == "5x5 (local)" and rows["conv"]["status"] == "global"
    assert rows["post"]["RF size"] == "?" and rows["post"]["status"].startswith("unknown")


def test_numbers_right_aligned(tmp_path: Path) -> None:
    res = run("torchvision:resnet18")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    spans = [(m.start(), m.end()) for m in __import__("re").finditer(r"-+", lines[1])]
    head = [lines[0][a:b].strip() for a, b in spans]
    for col in ("params", "MACs", "RF size"):
        a, b = spans[head.index(col)]
        body = [ln for ln in lines[2:] if ln.strip()][:20]
        assert all(ln[b - 1] != " " for ln in body), col  # every cell ends at the column's right edge
    conv1 = next(ln for ln in lines if ln.startswith("conv1 "))
    a, b = spans[head.index("params")]
    assert conv1[a:b] == fmt_count(9408).rjust(b - a)  # 64*3*7*7


def test_table_fits_the_terminal() -> None:
    res = run("torchvision:vit_b_16", env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    assert any("16x16 (local)" in ln for ln in lines)  # numbers are never cut
    wide = run("torchvision:vit_b_16", env={"COLUMNS": "400"})
    assert max(len(ln) for ln in wide.output.splitlines()) > 100  # the same table, unshortened


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    out = tmp_path / "net.dot"
    res = run(_net(tmp_path), "--diagram", str(out), "--quiet")
    assert res.exit_code == 0 and res.output == ""
    assert out.read_text().startswith("digraph")


def test_csv_stays_csv_with_the_init_check(tmp_path: Path) -> None:
    res = run(_net(tmp_path), "--format", "csv", "--check-init")
    assert res.exit_code in (0, 1), res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0][0] == "layer" and all(len(r) == len(rows[0]) for r in rows)
    assert res.stderr.strip() and not any(f in res.stdout for f in ("init check", "error", "warning"))


def test_report_table_formats_in_python() -> None:
    rep = rfscope.analyze(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), (1, 3, 8, 8))
    rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(rep.table(format="csv", columns=["layer", "params"]))))
    assert rows[1] == {"layer": "0", "params": str(8 * 3 * 9 + 8)}
    with pytest.raises(ValueError, match="unknown format"):
        rep.table(format="xml")
    with pytest.raises(ValueError, match="depth"):
        rep.rows(depth=0)


def test_dataframe_has_the_table_rows(vit: tuple[nn.Module, rfscope.Report]) -> None:
    pytest.importorskip("pandas")
    model, rep = vit
    df = rep.to_dataframe()
    assert list(df["layer"]) == [row.label for row in rep.rows()]
    assert int(df["params"].sum()) == numel(model)
    assert int(df["layer"].str.endswith(".self_attention").sum()) == len(model.encoder.layers)


def test_shortened_labels_keep_the_block_index_and_the_leaf() -> None:
    from rfscope.report import _shorten

    label = "encoder.layers.encoder_layer_0.self_attention"
    assert _shorten(label, 40, "layer") == "e.layers.encoder_layer_0.self_attention"
    assert _shorten(label, 34, "layer") == "e.l.encoder_layer_0.self_attention"
    assert _shorten(label, 20, "layer") == "…er_0.self_attention"
    assert _shorten("unknown: no plugin for cumsum", 8, "status") == "unknown…"
    assert _shorten("1x197x768", 3, "shape") == "1x197x768"  # numbers are never cut
