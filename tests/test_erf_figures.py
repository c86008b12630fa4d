"""ERF figures (issue 16, item 6): colour map, dpi, formats, caption, axis labels, the clipped RF
marker, several nodes in one run, the grid figure; and the exact probe's progress."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from PIL import Image

import rfscope
from rfscope.cli import main
from rfscope.probe import erf
from rfscope.probe.effective import output_files, plot_grid, save_results
from rfscope.probe.plot import PAD, FigureOptions, grid_figure, heatmap_figure

OLD_ZERO = np.array(matplotlib.colormaps["RdYlGn"](0.0)[:3]) * 255  # the old deep red


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def small() -> rfscope.probe.ERFResult:
    return erf(_net(), node="2", input_shape=(1, 3, 32, 32), samples=2, device="cpu", progress=False)


def test_default_cmap_zero_is_not_deep_red(small, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert small.map[2, 2] == 0  # far from the 5x5 RF at the centre
    paths = small.save(tmp_path, dpi=100)
    assert tmp_path / "erf.png" in paths
    img = np.asarray(Image.open(tmp_path / "erf.png").convert("RGB")).astype(float)
    fig = heatmap_figure(small.heatmap(), FigureOptions(dpi=100))
    try:
        assert fig.dpi == 100
        x, y = fig.axes[0].transData.transform((2, 2))  # display pixels from the figure's bottom left
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches: the PNG is this box plus PAD
        left, top = (box.x0 - PAD) * fig.dpi, (box.y1 + PAD) * fig.dpi
        h = top - (box.y0 - PAD) * fig.dpi
    finally:
        plt.close(fig)
    px = img[int(round(top - y)), int(round(x - left))]
    assert abs(img.shape[0] - h) <= 2
    assert np.abs(px - OLD_ZERO).max() > 60, px
    want = np.array(matplotlib.colormaps["cividis"](0.0)[:3]) * 255
    assert np.abs(px - want).max() < 12, (px, want)
    # another map is used when asked
    small.save(tmp_path / "magma", dpi=100, cmap="magma")
    img = np.asarray(Image.open(tmp_path / "magma" / "erf.png").convert("RGB")).astype(float)
    want = np.array(matplotlib.colormaps["magma"](0.0)[:3]) * 255
    assert np.abs(img[int(round(top - y)), int(round(x - left))] - want).max() < 12
    with pytest.raises(ValueError, match="colour map"):
        small.save(tmp_path / "bad", cmap="no-such-map")


def test_dpi_changes_the_png_size(small, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small.save(tmp_path / "a", dpi=50)
    small.save(tmp_path / "b", dpi=200)
    a, b = Image.open(tmp_path / "a" / "erf.png"), Image.open(tmp_path / "b" / "erf.png")
    # 4x the dpi, 4x the pixels (within text hinting: the bounding box is tight around the text)
    assert b.size[0] == pytest.approx(4 * a.size[0], rel=0.02) and b.size[1] == pytest.approx(4 * a.size[1], rel=0.02)
    assert (tmp_path / "b" / "erf.png").stat().st_size > (tmp_path / "a" / "erf.png").stat().st_size
    with pytest.raises(ValueError, match="dpi"):
        FigureOptions(dpi=0)


def test_svg_and_pdf(small, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "erf.png").write_bytes(b"a PNG of another run")
    paths = small.save(tmp_path, fmt="svg")
    assert {p.name for p in paths} == {"erf.npy", "erf.json", "erf.svg"}
    assert not (tmp_path / "erf.png").exists()  # no image of another run stays
    root = ET.fromstring((tmp_path / "erf.svg").read_bytes())
    assert root.tag.endswith("svg")
    small.save(tmp_path, fmt="pdf")
    assert (tmp_path / "erf.pdf").read_bytes().startswith(b"%PDF") and not (tmp_path / "erf.svg").exists()
    again = tmp_path / "again"
    small.save(again, fmt="pdf")
    assert (again / "erf.pdf").read_bytes() == (tmp_path / "erf.pdf").read_bytes()  # no creation date
    with pytest.raises(ValueError, match="format"):
        small.save(tmp_path, fmt="jpg")


def test_caption_off_and_axis_labels(small) -> None:  # type: ignore[no-untyped-def]
    on = heatmap_figure(small.heatmap(), FigureOptions())
    off = heatmap_figure(small.heatmap(), FigureOptions(caption=False))
    try:
        assert any("reduction: clip" in t.get_text() for t in on.texts)
        assert off.texts == []
        ax = off.axes[0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (input px)", "y (input px)")
        assert "static RF 5x5" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(on)
        plt.close(off)


def test_one_d_axis_labels() -> None:
    net = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1))
    r = erf(net, node="0", input_shape=(1, 1, 20), samples=1, device="cpu", progress=False)
    fig = heatmap_figure(r.heatmap())
    try:
        assert fig.axes[0].get_xlabel() == "position (input px)"
        assert fig.axes[0].get_ylabel().startswith("gradient")
    finally:
        plt.close(fig)


def test_clipped_rf_marker_is_drawn_and_named() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 9, padding=4), nn.Conv2d(1, 1, 9, padding=4))  # RF 17 > input 10
    r = erf(net, node="1", input_shape=(1, 1, 10, 10), samples=1, device="cpu", progress=False)
    assert r.rf["window"][0][0] < 0
    fig = heatmap_figure(r.heatmap())
    try:
        ax = fig.axes[0]
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts == ["static RF 17x17, clipped to the input"]
        edges = [ln for ln in ax.lines if ln.get_color() == "tab:red" and len(ln.get_xdata()) == 2]
        assert len(edges) == 4 and all(ln.get_linestyle() == "--" for ln in edges)
        assert all(not ln.get_clip_on() for ln in edges)  # drawn over the axes' border, not hidden by it
        xs = sorted({float(v) for ln in edges for v in ln.get_xdata()})
        assert xs == [-0.5, 9.5]  # on the input's border
    finally:
        plt.close(fig)
    # an RF inside the input: solid edges, no clipping note
    inner = erf(net, node="0", input_shape=(1, 1, 20, 20), samples=1, device="cpu", progress=False)
    fig = heatmap_figure(inner.heatmap())
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["static RF 9x9"]
        edges = [ln for ln in ax.lines if ln.get_color() == "tab:red" and len(ln.get_xdata()) == 2]
        assert all(ln.get_linestyle() == "-" for ln in edges)
    finally:
        plt.close(fig)


def test_several_nodes_equal_separate_runs() -> None:
    net = _net()
    kw = {"input_shape": (1, 3, 24, 24), "samples": 5, "batch_size": 2, "device": "cpu", "progress": False,
          "seed": 3}
    together = erf(net, node=["0", "2", "4"], **kw)  # type: ignore[arg-type]
    assert isinstance(together, list) and len(together) == 3
    for r, n in zip(together, ["0", "2", "4"], strict=True):
        alone = erf(net, node=n, **kw)  # type: ignore[arg-type]
        assert np.array_equal(r.map, alone.map)
        assert r.to_dict() | {"versions": None} == alone.to_dict() | {"versions": None}
    with pytest.raises(rfscope.probe.ProbeError, match="twice"):
        erf(net, node=["2", "2"], **kw)  # type: ignore[arg-type]


def test_forward_runs_once_per_batch_for_several_nodes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rfscope.probe.effective as E

    calls: list[int] = []
    real = E.select_outputs

    def counted(gm, names):  # type: ignore[no-untyped-def]
        g = real(gm, names)
        first = next(n for n in g.graph.nodes if n.op == "call_module")  # runs once per forward
        g.get_submodule(first.target).register_forward_pre_hook(lambda *_: calls.append(len(names)))
        return g

    monkeypatch.setattr(E, "select_outputs", counted)
    erf(_net(), node=["0", "4"], input_shape=(1, 3, 16, 16), samples=6, batch_size=2, device="cpu",
        progress=False)
    assert calls == [2, 2, 2]  # one forward of both nodes per batch


def test_grid_figure_and_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs = erf(_net(), node=["0", "2", "4"], input_shape=(1, 3, 24, 24), samples=2, device="cpu", progress=False)
    fig = grid_figure([r.heatmap(panel=True) for r in rs])
    try:
        assert len(fig.axes) == 4  # three panels and one shared colour bar
        titles = [ax.get_title() for ax in fig.axes[:3]]
        assert titles[0].startswith("0\nRF 3x3, ERF") and "ERF/RF" in titles[2]
    finally:
        plt.close(fig)
    data = plot_grid(rs)
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG")
    assert plot_grid(rs, tmp_path / "g.svg") == tmp_path / "g.svg"
    ET.fromstring((tmp_path / "g.svg").read_bytes())
    (tmp_path / "erf.npy").write_bytes(b"a single-node run")
    paths = save_results(rs, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(output_files(["0", "2", "4"]))
    assert "erf_grid.png" in names and not (tmp_path / "erf.npy").exists()
    assert json.loads((tmp_path / "erf_2.json").read_text())["label"] == "2"
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "erf.schema.json").read_text())
    for n in ("0", "2", "4"):  # every node's file is an erf.json
        jsonschema.Draft202012Validator(schema).validate(json.loads((tmp_path / f"erf_{n}.json").read_text()))
    rs[0].save(tmp_path)  # a single-node run removes the grid
    assert not (tmp_path / "erf_grid.png").exists() and (tmp_path / "erf.png").exists()


def test_cli_options_and_several_nodes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "net.py"
    f.write_text(
        "import torch, torch.nn as nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))\n"
        "input_shape = (1, 3, 16, 16)\n"
    )
    run = CliRunner().invoke
    out = tmp_path / "o"
    r = run(main, ["probe", str(f), "--mode", "erf", "--node", "0", "--node", "2", "--samples", "2",
                   "--device", "cpu", "--out", str(out), "--quiet", "--cmap", "viridis", "--dpi", "60",
                   "--image-format", "svg", "--no-caption"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(output_files(["0", "2"], "svg"))
    assert r.output.count("ERF of") == 2
    sep = erf(rfscope.loader.load_model(str(f)).model, node="2", input_shape=(1, 3, 16, 16), samples=2,
              device="cpu", progress=False)
    assert np.array_equal(np.load(out / "erf_2.npy"), sep.map)
    r = run(main, ["probe", str(f), "--mode", "erf", "--out", str(tmp_path / "p"), "--cmap", "nope"])
    assert r.exit_code == 2 and "colour map" in r.output
    r = run(main, ["probe", str(f), "--mode", "erf", "--out", str(tmp_path / "p"), "--image-format", "jpg"])
    assert r.exit_code == 2
    # two nodes whose file names would collide: refused before the model is loaded
    r = run(main, ["probe", str(f), "--mode", "erf", "--out", str(tmp_path / "p"), "--node", "a/b", "--node", "a_b"])
    assert r.exit_code == 2 and "file names" in r.output and not (tmp_path / "p").exists()
    r = run(main, ["probe", str(f), "--mode", "erf", "--node", "2", "--samples", "1", "--device", "cpu",
                   "--out", str(tmp_path / "q"), "--quiet", "--dpi", "40"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "q" / "erf.png").size[0] < 400


def test_exact_probe_progress(capsys) -> None:  # type: ignore[no-untyped-def]
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2))
    assert rfscope.probe.validate(net, input_shape=(1, 1, 32, 32), device="cpu", progress=True).ok
    err = capsys.readouterr().err
    assert "exact probe" in err
    assert rfscope.probe.validate(net, input_shape=(1, 1, 32, 32), device="cpu").ok
    assert capsys.readouterr().err == ""


def test_cli_exact_progress_on_stderr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\nmodel = nn.Sequential(nn.Conv2d(1, 2, 3))\ninput_shape = (1, 1, 16, 16)\n")
    r = CliRunner().invoke(main, ["probe", str(f), "--mode", "exact", "--device", "cpu"])
    assert r.exit_code == 0 and "exact probe" in r.stderr and "exact probe" not in r.stdout
    for flag in ("--quiet", "--no-progress"):
        r = CliRunner().invoke(main, ["probe", str(f), "--mode", "exact", "--device", "cpu", flag])
        assert r.exit_code == 0 and "exact probe" not in r.stderr


def test_png_size_is_reasonable(small) -> None:  # type: ignore[no-untyped-def]
    from rfscope.probe.plot import heatmap_image

    data = heatmap_image(small.heatmap(), FigureOptions())
    assert data is not None and Image.open(io.BytesIO(data)).format == "PNG"
