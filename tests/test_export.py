"""Graphviz export: golden DOT files, rendering with ``dot``, the CLI, and a large model.

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
from pathlib import Path
from typing import Any

import pytest
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope import Registry, Unsupported, export
from rfscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("RFSCOPE_REGEN_GOLDEN", "") not in ("", "0")
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz 'dot' is not on PATH (apt-get install graphviz)")
WEIRD = 'weird "quoted" {braces} <angle> & back\\slash'


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


@needs_dot
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_parses_and_renders(name: str, tmp_path: Path) -> None:
    """The committed goldens are valid DOT with valid HTML labels: dot renders them silently."""
    src = GOLDEN / f"{name}.dot"
    out = tmp_path / "g.svg"
    assert DOT is not None
    proc = subprocess.run([DOT, "-Tsvg", "-o", str(out), str(src)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # bad HTML labels only warn
    assert "<svg" in out.read_text(encoding="utf-8")


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


def test_unknown_misaligned_and_escaping() -> None:
    dot = export.to_dot(branchy())
    add = node_attrs(dot, "add")
    assert "misaligned merge" in add and "RF unknown" in add and "strides differ (2 vs 1)" in add
    red = re.findall(r'^\s*"([^"]+)" -> "add" \[color="#cb181d"', dot, re.M)
    assert sorted(red) == ["down", "getitem"]
    head = node_attrs(dot, "head")  # unknown because of its input: quieter
    assert "from an input" in head and "dashed" in head and "misaligned merge" not in head
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


@needs_dot
def test_escaped_text_survives_rendering(tmp_path: Path) -> None:
    res = branchy().render(tmp_path / "b.svg")
    svg = (tmp_path / "b.svg").read_text(encoding="utf-8")
    assert res.image == tmp_path / "b.svg" and res.source == tmp_path / "b.dot"
    assert "{braces} &lt;angle&gt;" in svg and "back\\slash" in svg


def test_bad_arguments() -> None:
    rep = branchy()
    with pytest.raises(ValueError, match="rankdir"):
        rep.to_dot(rankdir="BT")
    with pytest.raises(ValueError, match="depth"):
        rep.to_dot(depth=0)


# ----------------------------------------------------------------------------- rendering and CLI
def run_cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["analyze", str(QUICKSTART), *args])


@needs_dot
@pytest.mark.parametrize("suffix,magic", [("svg", b"<svg"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_cli_images(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = tmp_path / f"net.{suffix}"
    res = run_cli(["--diagram", str(out), "--depth", "1", "--rankdir", "lr"])
    assert res.exit_code == 0, res.output
    assert magic in out.read_bytes()[:400]
    assert "rankdir=LR" in (tmp_path / "net.dot").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "net.dot"])  # no temp files left


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
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    res = run_cli(["--diagram", str(tmp_path / "net.png")])
    assert res.exit_code == 2
    assert "apt-get install graphviz" in res.output and "graphviz-pure" in res.output
    assert (tmp_path / "net.dot").exists() and not (tmp_path / "net.png").exists()
    res = run_cli(["--diagram", str(tmp_path / "only.dot")])
    assert res.exit_code == 0, res.output
    assert "no Graphviz 'dot' on PATH" in res.output and (tmp_path / "only.dot").exists()


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
    res = run_cli(["--depth", "2"])
    assert res.exit_code == 2 and "--diagram" in res.output
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
