"""Graphviz export: golden DOT files, rendering (Graphviz's ``dot`` when present, and always the
bundled ``graphviz-pure``), the renderer lookup and overrides, the CLI, and a large model.

Regenerate the goldens after an intended change with
``RFSCOPE_REGEN_GOLDEN=1 python -m pytest tests/test_export.py`` and review the diff
(``git diff tests/golden``) before committing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch.nn as nn
from click.testing import CliRunner

import rfscope
import rfscope.export.dot as dotmod
from rfscope import Registry, Unsupported, export
from rfscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("RFSCOPE_REGEN_GOLDEN", "") not in ("", "0")
#: every renderer on this machine: the bundled graphviz-pure always (a dependency), Graphviz's dot when installed
BUNDLED = dotmod.find_bundled()
RENDERERS = {"graphviz-pure": BUNDLED, **({"dot": d} if (d := shutil.which("dot")) else {})}
#: graphviz-pure (like Graphviz built without pango) estimates text widths, warning once per non-ASCII byte
WIDTH_WARNING = re.compile(r"^Warning: (Warning: )?no value for width of non-ASCII character \d+\. .*$")
WEIRD = 'weird "quoted" {braces} <angle> & back\\slash'


@pytest.fixture(autouse=True)
def _no_renderer_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's RFSCOPE_DOT must not change which renderer these tests see."""
    monkeypatch.delenv(dotmod.ENV_VAR, raising=False)


def test_the_bundled_renderer_is_installed() -> None:
    """graphviz-pure is a dependency: found in this environment, so no diagram test is ever skipped."""
    assert BUNDLED is not None, "graphviz-pure is missing: pip install -e . (it is a core dependency)"
    assert Path(BUNDLED).name.removesuffix(".exe") == "graphviz-pure" and os.access(BUNDLED, os.X_OK)


# ----------------------------------------------------------------------------- models
@functools.cache  # per process (xdist worker); to_dot/render do not modify the report
def quickstart() -> rfscope.Report:
    ns = runpy.run_path(str(QUICKSTART))
    return rfscope.analyze(ns["model"](), ns["input_shape"])


class Opaque(nn.Module):
    def forward(self, x: Any) -> Any:
        return x * 2


class Branchy(nn.Module):
    """A misaligned merge, an op whose plugin refuses (odd characters in the reason),
    a shared conv, dilation holes and a transposed conv with phase-dependent sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.head = nn.Conv2d(3, 4, 1)
        self.odd = Opaque()
        self.dil = nn.Conv2d(3, 3, 3, dilation=2, padding=2)
        self.up = nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: Any) -> Any:
        y = self.down(x) + x[:, :, :8, :8]  # stride 2 + stride 1: misaligned
        return self.head(y), self.odd(x), self.up(self.dil(self.down(x)))


@functools.cache
def branchy() -> rfscope.Report:
    reg = Registry()
    reg.ensure_loaded()

    def refuse(ctx: Any) -> Any:
        raise Unsupported(WEIRD)

    reg.add("test.opaque", [Opaque], rf=refuse)
    return rfscope.analyze(Branchy(), (1, 3, 16, 16), registry=reg)


CASES = {
    "quickstart": lambda: quickstart().to_dot(),
    "quickstart_depth1_lr": lambda: quickstart().to_dot(depth=1, rankdir="LR"),
    "branchy": lambda: export.to_dot(branchy()),
}


def node_attrs(dot: str, node: str) -> str:
    m = re.search(rf'^\s*"{re.escape(node)}" \[(.*)\];$', dot, re.M)
    assert m, f"node {node!r} not in the DOT source"
    return m.group(1)


def drawn_nodes(dot: str) -> list[str]:
    """Ids of the drawn graph nodes (not the cluster titles)."""
    ids = re.findall(r'^\s*"([^"]+)" \[', dot, re.M)
    return [i for i in ids if not i.startswith("hdr:")]


def edges(dot: str) -> list[tuple[str, str]]:
    return [(a, b) for a, b, extra in re.findall(r'^\s*"([^"]+)" -> "([^"]+)"(.*);$', dot, re.M)
            if "invis" not in extra]


# ----------------------------------------------------------------------------- goldens
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = CASES[name]()
    path = GOLDEN / f"{name}.dot"
    if REGEN:
        path.write_text(text, encoding="utf-8")
        pytest.skip(f"regenerated {path}")
    assert path.exists(), f"{path} missing: run with RFSCOPE_REGEN_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8"), (
        f"DOT output differs from {path}; if intended, regenerate with RFSCOPE_REGEN_GOLDEN=1 and review the diff"
    )


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_parses_and_renders(name: str, renderer: str, tmp_path: Path) -> None:
    """The committed goldens are valid DOT with valid HTML labels: each renderer renders them silently
    (with rfscope's arguments), but for graphviz-pure's note that it estimates non-ASCII widths."""
    src = GOLDEN / f"{name}.dot"
    exe = RENDERERS[renderer]
    assert exe is not None
    for fmt, magic in (("svg", b"<svg"), ("png", b"\x89PNG")):
        out = tmp_path / f"g.{fmt}"
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(out), str(src)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        noise = [ln for ln in proc.stderr.splitlines() if ln.strip() and not WIDTH_WARNING.match(ln)]
        assert noise == [], proc.stderr  # bad HTML labels only warn
        assert magic in out.read_bytes()[:400]


def dot_node_ids(dot: str) -> list[str]:
    """Every node statement's id, cluster titles (``hdr:N``) included; not edges."""
    return re.findall(r'(?:^\s*|; )"([^"]+)" \[', dot, re.M)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("case", ["quickstart", "quickstart_depth1_lr", "branchy"])
def test_svg_is_well_formed_with_one_node_group_per_node(case: str, renderer: str, tmp_path: Path) -> None:
    rep, kw = {"quickstart": (quickstart, {}), "quickstart_depth1_lr": (quickstart, {"depth": 1, "rankdir": "LR"}),
               "branchy": (branchy, {})}[case]
    res = export.render(rep(), tmp_path / "g.svg", dot=RENDERERS[renderer], **kw)
    ids = dot_node_ids(rep().to_dot(**kw))
    assert len(ids) == len(set(ids)) and ("hdr:1" in ids) == (case == "quickstart")  # TB cluster titles are nodes
    assert res.image == tmp_path / "g.svg" and res.renderer == RENDERERS[renderer]
    root = ET.parse(res.image).getroot()  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    groups = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    titles = [g.findtext("{http://www.w3.org/2000/svg}title") for g in groups]
    assert len(groups) == len(ids) and sorted(titles) == sorted(ids)


# ----------------------------------------------------------------------------- content (hand-derived)
def test_quickstart_labels_and_colours() -> None:
    dot = quickstart().to_dot()
    # stem conv k3 s2 -> 3; maxpool k3 s2 -> 7 (stride 4); two 3x3 per block; stride-2 blocks:
    # 23 -> 31 -> 47 (stride 8) -> 63 -> 95 (stride 16)
    last = node_attrs(dot, "stage3_relu_1")
    assert "RF 95×95, stride 16×16" in last and "1×128×8×8" in last and "stage3.relu@1" in last
    assert 'fillcolor="#1d91c0"' in last  # 95/128 is in [1/2, 1)
    first = node_attrs(dot, "stem_0")
    assert "RF 3×3, stride 2×2" in first and 'fillcolor="#ffffd9"' in first  # 3/128 < 1/32
    assert "864 params" in first  # 3*32*3*3, no bias
    legend = dot[dot.index("label=<<TABLE"):dot.index("</TABLE>>];")]  # the graph label
    assert "1/16 – 1/8" in legend and "global: sees the whole input" in legend and "unknown" not in legend
    pool = node_attrs(dot, "pool")
    assert "RF global" in pool and "peripheries=2" in pool
    # stage2's skip branch is a nested cluster inside stage2's cluster
    i2, iskip, iconv = dot.index("<B>stage2</B>"), dot.index("<B>skip</B> : Sequential"), dot.index('"stage2_skip_0" [')
    assert i2 < iskip < iconv


def test_depth_collapses_and_dedups_edges() -> None:
    dot = quickstart().to_dot(depth=1, rankdir="LR")
    assert "rankdir=LR" in dot
    assert drawn_nodes(dot) == ["x", "mod:stem", "mod:stage1", "mod:stage2", "mod:stage3", "pool", "flatten",
                                "fc", "output"]
    assert edges(dot) == [("x", "mod:stem"), ("mod:stem", "mod:stage1"), ("mod:stage1", "mod:stage2"),
                          ("mod:stage2", "mod:stage3"), ("mod:stage3", "pool"), ("pool", "flatten"),
                          ("flatten", "fc"), ("fc", "output")]
    stage2 = node_attrs(dot, "mod:stage2")
    # the module's aggregate RF is its output's; params = 2 convs 3x3 (32->64, 64->64), 1x1 skip, 3 BNs
    assert "RF 47×47, stride 8×8" in stage2
    n = 32 * 64 * 9 + 64 * 64 * 9 + 32 * 64 + 3 * 2 * 64
    assert n == 57_728 and "57.7K params" in stage2
    assert "shape=box3d" in stage2


def test_misaligned_merge_per_position_and_escaping() -> None:
    dot = export.to_dot(branchy())
    # stride 2 + stride 1: no periodic RF, but each element's window is exact (a per-position table);
    # the largest: a stride-2 3x3 window and one pixel, 2*7+1 and 7 -> [13, 15] and 7: a 9-pixel box
    add = node_attrs(dot, "add")
    assert "RF ≤9×9, per position" in add and "RF unknown" not in add
    assert "RF ≤9×9, per position" in node_attrs(dot, "head")
    odd = node_attrs(dot, "odd")
    assert "weird &quot;quoted&quot; {braces} &lt;angle&gt;" in odd and "&amp; back\\slash" in odd
    assert 'tooltip="odd: Opaque | unknown: Opaque: weird \\"quoted\\" {braces} <angle> & back\\\\slash"' in odd
    # dilation 2 after a stride-2 conv of size 3: offsets 0, 4, 8 of [0..2] -> 9 of 11 pixels
    dil = node_attrs(dot, "dil")
    assert "RF 11×11, stride 2×2" in dil and "holes: sees 9/11, 9/11 of the box" in dil
    # transposed k3 s2: output phases get 1 or 2 taps 2 px apart -> 11 or 13
    assert "RF (11–13)×(11–13), stride 1×1" in node_attrs(dot, "up")
    assert "params shared with down" in node_attrs(dot, "down_1")


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: Any) -> Any:
        y = self.conv(x)
        return y * y.mean((2, 3), keepdim=True).sigmoid()


def test_global_with_local_rf_is_filled_by_the_local_rf() -> None:
    dot = rfscope.analyze(SqueezeExcite(), (1, 3, 16, 16)).to_dot()
    mul = node_attrs(dot, "mul")
    assert "RF global" in mul and "local RF 3×3, stride 1×1" in mul and "peripheries=2" in mul
    assert 'fillcolor="#7fcdbb"' in mul  # local 3/16 is in [1/8, 1/4)
    mean = node_attrs(dot, "mean")  # no local path: plain global fill
    assert "local RF" not in mean and 'fillcolor="#fdd49e"' in mean


class Half(nn.Module):
    def forward(self, x: Any) -> Any:
        return x * 0.5


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.scale = Half()

    def forward(self, x: Any) -> Any:
        return self.scale(self.conv(x))


def test_one_op_module_is_drawn_as_the_module() -> None:
    dot = rfscope.analyze(Scaled(), (1, 3, 16, 16)).to_dot()
    mul = node_attrs(dot, "mul")
    assert "<B>Half</B>" in mul and "scale · mul" in mul and "RF 3×3, stride 1×1" in mul
    assert "subgraph cluster" not in dot  # no one-node cluster around it


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_escaped_text_survives_rendering(tmp_path: Path, renderer: str) -> None:
    res = export.render(branchy(), tmp_path / "b.svg", dot=RENDERERS[renderer])
    svg = (tmp_path / "b.svg").read_text(encoding="utf-8")
    assert res.image == tmp_path / "b.svg" and res.source == tmp_path / "b.dot"
    assert "{braces} &lt;angle&gt;" in svg and "back\\slash" in svg
    assert "1×3×8×8" in svg and "RF (11–13)×(11–13)" in svg  # UTF-8 text kept


def test_report_render_uses_the_default_renderer(tmp_path: Path) -> None:
    res = branchy().render(tmp_path / "b.png")
    assert res.image is not None and res.image.read_bytes()[:4] == b"\x89PNG"
    assert res.renderer == (RENDERERS.get("dot") or BUNDLED)


def test_bad_arguments() -> None:
    rep = branchy()
    with pytest.raises(ValueError, match="rankdir"):
        rep.to_dot(rankdir="BT")
    with pytest.raises(ValueError, match="depth"):
        rep.to_dot(depth=0)


# ----------------------------------------------------------------------------- rendering and CLI
def run_cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["analyze", str(QUICKSTART), *args])


MAGIC = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF"}
#: (renderer, format) pairs this machine renders: graphviz-pure svg/png; Graphviz's dot also pdf when present
IMAGE_CASES = [(r, f) for r in sorted(RENDERERS) for f in (("svg", "png") if r == "graphviz-pure" else MAGIC)]


@pytest.mark.parametrize("renderer,suffix", IMAGE_CASES)
def test_cli_images(tmp_path: Path, renderer: str, suffix: str) -> None:
    out = tmp_path / f"net.{suffix}"
    exe = RENDERERS[renderer]
    assert exe is not None
    res = run_cli(["--diagram", str(out), "--depth", "1", "--rankdir", "lr", "--dot", exe])
    assert res.exit_code == 0, res.output
    assert MAGIC[suffix] in out.read_bytes()[:400]
    assert "rankdir=LR" in (tmp_path / "net.dot").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "net.dot"])  # no temp files left


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_cli_images_with_the_default_renderer(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"net.{suffix}"
    res = run_cli(["--diagram", str(out)])
    assert res.exit_code == 0, res.output
    assert MAGIC[suffix] in out.read_bytes()[:400] and f"wrote {out}" in res.output


def _script(path: Path, tag: str) -> Path:
    """A fake renderer that writes ``tag`` and the DOT source it was given to its ``-o`` file."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport sys\na = sys.argv\n"
                    f"open(a[a.index('-o') + 1], 'w').write({tag!r} + '\\n' + open(a[-1]).read())\n")
    path.chmod(0o755)
    return path


def test_bundled_renderer_is_found_without_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """graphviz-pure is found from this Python environment (its files, the scripts directory), not PATH."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert dotmod.find_dot() is None
    found = dotmod.find_renderer()
    assert found is not None and found.origin == "bundled" and found.bundled and found.path == BUNDLED
    assert found.formats == ("svg", "png")
    res = export.render(branchy(), tmp_path / "b.svg")
    assert res.renderer == BUNDLED and (tmp_path / "b.svg").read_bytes().lstrip().startswith(b"<?xml")


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dot / dot= > RFSCOPE_DOT > dot on PATH > bundled graphviz-pure."""
    fake_dot = _script(tmp_path / "bin" / "dot", "PATH")
    env_r = _script(tmp_path / "env" / "env-renderer", "ENV")
    arg_r = _script(tmp_path / "arg" / "arg-renderer", "ARG")
    monkeypatch.setenv("PATH", str(fake_dot.parent))
    r = dotmod.find_renderer()
    assert r is not None and (r.path, r.origin, r.bundled) == (str(fake_dot), "PATH", False)
    assert r.formats == ("svg", "png", "pdf")
    monkeypatch.setenv("RFSCOPE_DOT", str(env_r))
    assert dotmod.find_renderer() == dotmod.Renderer(str(env_r), "RFSCOPE_DOT")
    assert dotmod.find_renderer(arg_r) == dotmod.Renderer(str(arg_r), "--dot")
    monkeypatch.setenv("RFSCOPE_DOT", "")  # empty: as if unset
    assert dotmod.find_renderer() == dotmod.Renderer(str(fake_dot), "PATH")
    monkeypatch.setenv("PATH", str(tmp_path / "env"))  # a bare program name is looked up on PATH
    assert dotmod.find_renderer("env-renderer") == dotmod.Renderer(str(env_r), "--dot")


def test_cli_dot_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dot = _script(tmp_path / "bin" / "dot", "<svg>PATH")
    env_r = _script(tmp_path / "env" / "env-renderer", "<svg>ENV")
    arg_r = _script(tmp_path / "arg" / "arg-renderer", "<svg>ARG")
    monkeypatch.setenv("PATH", str(fake_dot.parent))
    out = tmp_path / "o"
    out.mkdir()
    svg = out / "net.svg"
    assert run_cli(["--diagram", str(svg)]).exit_code == 0
    assert svg.read_text().startswith("<svg>PATH\ndigraph")
    monkeypatch.setenv("RFSCOPE_DOT", str(env_r))
    assert run_cli(["--diagram", str(svg)]).exit_code == 0
    assert svg.read_text().startswith("<svg>ENV\ndigraph")
    res = run_cli(["--diagram", str(svg), "--dot", str(arg_r)])
    assert res.exit_code == 0, res.output
    assert svg.read_text().startswith("<svg>ARG\ndigraph")
    # source only: the message says how to render it with the renderer that would be used
    res = run_cli(["--diagram", str(out / "s.dot"), "--dot", str(arg_r)])
    assert res.exit_code == 0 and f"render it with: {arg_r} -Tsvg" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["net.dot", "net.svg", "s.dot"]


@pytest.mark.parametrize("how", ["--dot", "RFSCOPE_DOT"])
@pytest.mark.parametrize("what", ["missing", "not executable", "directory", "unknown name"])
def test_bad_override_is_a_one_line_error_before_the_analysis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, what: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    value = {"missing": str(tmp_path / "nope" / "dot"), "not executable": str(plain), "directory": str(tmp_path),
             "unknown name": "no-such-renderer"}[what]
    called: list[int] = []
    monkeypatch.setattr(rfscope.pipeline, "analyze", lambda *a, **k: called.append(1))
    out = tmp_path / "o"
    out.mkdir()
    for suffix in ("svg", "dot"):
        args = ["--diagram", str(out / f"net.{suffix}")]
        if how == "--dot":
            args += ["--dot", value]
        else:
            monkeypatch.setenv("RFSCOPE_DOT", value)
        res = run_cli(args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and how in lines[0] and repr(value) in lines[0], res.output
        want = {"missing": "no such file", "not executable": "not executable", "directory": "is a directory",
                "unknown name": "nor a program of that name on PATH"}[what]
        assert want in lines[0]
    assert not called and list(out.iterdir()) == []


def test_dot_option_needs_a_diagram() -> None:
    res = run_cli(["--dot", "dot"])
    assert res.exit_code == 2 and "--dot only applies to a diagram" in res.output


def test_pdf_with_only_the_bundled_renderer_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Graphviz's dot (as on a fresh machine: find_dot patched, whatever this machine has),
    .pdf fails before the analysis, naming apt-get install graphviz; nothing is written."""
    monkeypatch.setattr(dotmod, "find_dot", lambda: None)
    called: list[int] = []
    monkeypatch.setattr(rfscope.pipeline, "analyze", lambda *a, **k: called.append(1))
    for extra in ([], ["--dot", str(BUNDLED)]):
        res = run_cli(["--diagram", str(tmp_path / "net.pdf"), *extra])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "apt-get install graphviz" in lines[0] and "graphviz-pure" in lines[0]
        assert "net.pdf" in lines[0] and ".svg, .png" in lines[0]
    assert not called and list(tmp_path.iterdir()) == []
    with pytest.raises(export.RendererNotFoundError, match="apt-get install graphviz"):
        export.check_path(tmp_path / "net.pdf")
    assert export.check_path(tmp_path / "net.png") == (tmp_path / "net.png", "png")


def test_pdf_goes_to_graphviz_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a dot on PATH, .pdf is rendered by it (a stand-in dot here, so this runs everywhere)."""
    _script(tmp_path / "bin" / "dot", "%PDF-stand-in")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    res = run_cli(["--diagram", str(tmp_path / "net.pdf")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "net.pdf").read_text().startswith("%PDF-stand-in\ndigraph rfscope")


def _console_command() -> list[str]:
    """``rfscope`` as installed (the console script, by absolute path), else the same entry point."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        script = Path(d) / ("rfscope.exe" if os.name == "nt" else "rfscope")
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)]
    return [sys.executable, "-c", "import sys; from rfscope.cli import main; main(sys.argv[1:], prog_name='rfscope')"]


def test_svg_with_an_empty_path_after_install(tmp_path: Path) -> None:
    """The acceptance check: after ``pip install -e .``, ``--diagram x.svg`` works with PATH set to an
    empty directory (no dot, no graphviz-pure on PATH) in a fresh process."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RFSCOPE_DOT"}
    env["PATH"] = str(empty)
    out = tmp_path / "x.svg"
    proc = subprocess.run([*_console_command(), "analyze", str(QUICKSTART), "--diagram", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (source {tmp_path / 'x.dot'})" in proc.stderr
    root = ET.parse(out).getroot()
    nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert len(nodes) == len(dot_node_ids((tmp_path / "x.dot").read_text(encoding="utf-8")))


@pytest.mark.parametrize("suffix", ["dot", "gv"])
def test_cli_source_only(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"net.{suffix}"
    res = run_cli(["--diagram", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8").startswith("digraph rfscope {")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_cli_json_stays_clean(tmp_path: Path) -> None:
    """The diagram message goes to stderr, so ``--format json`` output still parses."""
    res = run_cli(["--format", "json", "--diagram", str(tmp_path / "net.gv")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output"] == "fc"
    assert "net.gv" in res.stderr


def test_cli_without_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No renderer at all (empty PATH, RFSCOPE_DOT unset, graphviz-pure not found): the source is
    written and the error says what to install."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(dotmod, "find_bundled", lambda: None)
    assert dotmod.find_renderer() is None
    res = run_cli(["--diagram", str(tmp_path / "net.png")])
    assert res.exit_code == 2
    last = res.output.strip().splitlines()[-1]
    assert "pip install graphviz-pure" in last and "apt-get install graphviz" in last and "rfscope[" not in last
    assert (tmp_path / "net.dot").exists() and not (tmp_path / "net.png").exists()
    res = run_cli(["--diagram", str(tmp_path / "net.pdf")])  # pdf: graphviz-pure would not help
    assert res.exit_code == 2 and "PDF needs Graphviz's dot: apt-get install graphviz" in res.output
    res = run_cli(["--diagram", str(tmp_path / "only.dot")])
    assert res.exit_code == 0, res.output
    assert "no Graphviz renderer (dot or graphviz-pure)" in res.output and (tmp_path / "only.dot").exists()


def test_failing_renderer_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text("#!/bin/sh\necho 'Error: simulated failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    out = tmp_path / "o"
    out.mkdir()
    res = run_cli(["--diagram", str(out / "net.svg")])
    assert res.exit_code == 2
    assert "simulated failure" in res.output
    assert [p.name for p in out.iterdir()] == ["net.dot"]


def _fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``dot`` on PATH that writes ``<svg>`` plus its input to the ``-o`` file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text(f"#!{sys.executable}\nimport sys\na = sys.argv\n"
                    "open(a[a.index('-o') + 1], 'w').write('<svg>\\n' + open(a[-1]).read())\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))


def test_diagram_through_symlinks_keeps_links_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--diagram onto a symlink replaces the link's target (the link stays); a mode-600 file stays 600."""
    _fake_dot(tmp_path, monkeypatch)
    store = tmp_path / "store"
    out = tmp_path / "out"
    store.mkdir()
    out.mkdir()
    for name in ("net.svg", "net.dot"):
        (store / name).write_text("old")
        (store / name).chmod(0o600)
        (out / name).symlink_to(store / name)
    res = run_cli(["--diagram", str(out / "net.svg")])
    assert res.exit_code == 0, res.output
    for name in ("net.svg", "net.dot"):
        assert (out / name).is_symlink() and os.readlink(out / name) == str(store / name)
        assert oct((store / name).stat().st_mode & 0o777) == oct(0o600), name
    assert (store / "net.dot").read_text().startswith("digraph rfscope")
    assert (store / "net.svg").read_text().startswith("<svg>\ndigraph rfscope")
    assert sorted(p.name for p in store.iterdir()) == ["net.dot", "net.svg"]  # no temp files left
    plain = tmp_path / "plain.dot"
    plain.write_text("old")
    plain.chmod(0o640)
    assert run_cli(["--diagram", str(plain)]).exit_code == 0
    assert plain.stat().st_mode & 0o777 == 0o640 and plain.read_text().startswith("digraph")


def test_diagram_disk_full_keeps_the_old_diagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_atomic import full_disk_after

    p = tmp_path / "net.dot"
    p.write_text("previous diagram")
    full_disk_after(monkeypatch, tmp_path, 100)
    res = run_cli(["--diagram", str(p)])
    assert res.exit_code == 2
    last = res.output.strip().splitlines()[-1]
    assert "net.dot" in last and "disk is full" in last
    assert p.read_text() == "previous diagram" and [q.name for q in tmp_path.iterdir()] == ["net.dot"]


def test_dot_failing_on_a_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dot").write_text("#!/bin/sh\necho 'Error: write failed' >&2\nexit 1\n")
    (bindir / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    out = tmp_path / "o"
    out.mkdir()
    (out / "net.svg").write_text("previous image")
    real = os.statvfs

    class Full:
        f_bavail = 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full() if Path(p) == out else real(p))
    res = run_cli(["--diagram", str(out / "net.svg")])
    assert res.exit_code == 2
    last = res.output.strip().splitlines()[-1]
    assert "net.svg" in last and "disk is full" in last and "write failed" in last
    assert (out / "net.svg").read_text() == "previous image"
    assert sorted(p.name for p in out.iterdir()) == ["net.dot", "net.svg"]


def test_diagram_onto_a_directory_fails_before_the_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net.dot").mkdir()  # the image's source would land on a directory
    called: list[int] = []
    monkeypatch.setattr(rfscope.pipeline, "analyze", lambda *a, **k: called.append(1))
    res = run_cli(["--diagram", str(tmp_path / "net.svg")])
    assert res.exit_code == 2 and "net.dot" in res.output and "directory" in res.output and not called


def test_cli_bad_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_cli(["--diagram", str(tmp_path / "missing" / "net.svg")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "missing").exists()
    f = tmp_path / "file"
    f.write_text("x")
    res = run_cli(["--diagram", str(f / "net.svg")])
    assert res.exit_code == 2 and "not a directory" in res.output
    res = run_cli(["--diagram", str(tmp_path / "net.jpg")])
    assert res.exit_code == 2 and ".svg" in res.output
    real_access = os.access
    monkeypatch.setattr(rfscope.export.files.os, "access",
                        lambda p, m: False if Path(p) == tmp_path else real_access(p, m))
    res = run_cli(["--diagram", str(tmp_path / "net.dot")])
    assert res.exit_code == 2 and "not writable" in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    res = run_cli(["--diagram", str(tmp_path / "x.dot"), "--depth", "0"])
    assert res.exit_code == 2


# ----------------------------------------------------------------------------- a large model
def test_resnet152_depth2_is_bounded() -> None:
    tv = pytest.importorskip("torchvision")
    rep = rfscope.analyze(tv.models.resnet152(weights=None), (1, 3, 224, 224))
    dot = rep.to_dot(depth=2)
    nodes = drawn_nodes(dot)
    # x, conv1, bn1, relu, maxpool; 3 + 8 + 36 + 3 bottlenecks; avgpool, flatten, fc, output
    assert len(nodes) == 5 + 50 + 4 < 80
    assert len(set(edges(dot))) == len(edges(dot))
    # layer4's last block: resnet50's layer4 is 427 (README's probe table); 152 adds (8-4 + 36-6) blocks' 3x3s
    # at strides 8 and 16: 427 + 4*2*8 + 30*2*16 = 1451
    assert "RF 1451×1451, stride 32×32" in node_attrs(dot, "mod:layer4.2")
