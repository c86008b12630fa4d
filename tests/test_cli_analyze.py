"""``rfscope analyze`` through click's runner: model discovery, input shapes, table and JSON."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rfscope.cli import main

HEADER = "import torch\nimport torch.nn as nn\n"
NET = "nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3))"


def write(tmp_path: Path, body: str, name: str = "m.py") -> str:
    p = tmp_path / name
    p.write_text(HEADER + textwrap.dedent(body), encoding="utf-8")
    return str(p)


def run(*args: str) -> Result:
    # a wide terminal: these tests read whole rows (pytest-xdist workers set COLUMNS=80; the
    # fitting of rows to a narrow terminal is tested in tests/test_table.py)
    return CliRunner().invoke(main, ["analyze", *args], env={"COLUMNS": "400"})


def as_json(res: Result) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.output)
    return out


def final_size(d: dict[str, Any]) -> list[int]:
    return list(d["modules"]["2"]["rf"]["size"])


# -- discovery rules -----------------------------------------------------------
@pytest.mark.parametrize("body", [
    f"model = {NET}\n",                                  # a module-level instance
    f"def model():\n    return {NET}\n",                 # a zero-argument callable
    f"class model(nn.Sequential):\n    def __init__(self):\n        super().__init__(*{NET})\n",  # a class
    f"def build_model():\n    return {NET}\n",           # build_model()
    f"net = {NET}\n",                                    # the only instance
], ids=["instance", "callable", "class", "build_model", "single-instance"])
def test_discovery_rules(tmp_path: Path, body: str) -> None:
    f = write(tmp_path, body)
    d = as_json(run(f, "--input-shape", "3,32,32", "--format", "json"))
    # conv k3 s2 p1 then k3: r = 3 + 2*2 = 7, j = 2, P = 1
    assert final_size(d) == [7, 7]
    assert d["modules"]["2"]["rf"]["stride"] == [2, 2] and d["modules"]["2"]["rf"]["padding"] == [1, 1]


def test_model_beats_build_model_and_instances(tmp_path: Path) -> None:
    f = write(tmp_path, f"""
        other = nn.Conv2d(3, 3, 5)
        def build_model():
            return nn.Conv2d(3, 3, 9)
        model = {NET}
        """)
    assert final_size(as_json(run(f, "--input-shape", "3,32,32", "--format", "json"))) == [7, 7]


def test_several_instances_is_an_error_listing_them(tmp_path: Path) -> None:
    f = write(tmp_path, "alpha = nn.Conv2d(3, 3, 3)\nbeta = nn.Conv2d(3, 3, 5)\n")
    res = run(f, "--input-shape", "3,16,16")
    assert res.exit_code == 2
    assert "alpha" in res.output and "beta" in res.output
    assert len(res.output.strip().splitlines()) == 1
    # and :attr picks one
    d = as_json(run(f + ":beta", "--input-shape", "3,16,16", "--format", "json"))
    assert d["nodes"][-1]["rf"]["size"] == [5, 5]


def test_no_model_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "x = 3\nclass Net(nn.Module):\n    pass\n")
    res = run(f, "--input-shape", "3,16,16")
    assert res.exit_code == 2 and "no model found" in res.output and "Net" in res.output


def test_attr_class_and_missing_attr(tmp_path: Path) -> None:
    f = write(tmp_path, """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv1d(2, 2, 5, dilation=2)
            def forward(self, x):
                return self.c(x)
        """)
    d = as_json(run(f + ":Net", "--input-shape", "2,40", "--format", "json"))
    assert d["input_shape"] == [1, 2, 40] and d["modules"]["c"]["rf"]["size"] == [9]
    res = run(f + ":Nope", "--input-shape", "2,40")
    assert res.exit_code == 2 and "Nope" in res.output and "Net" in res.output


# -- input shapes --------------------------------------------------------------
def test_input_shape_from_file(tmp_path: Path) -> None:
    f = write(tmp_path, f"model = {NET}\ninput_shape = (1, 3, 20, 24)\n")
    d = as_json(run(f, "--format", "json"))
    assert d["input_shape"] == [1, 3, 20, 24]
    # the command line wins
    assert as_json(run(f, "--input-shape", "3,16,16", "--format", "json"))["input_shape"] == [1, 3, 16, 16]


def test_example_inputs_from_file(tmp_path: Path) -> None:
    f = write(tmp_path, """
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Conv2d(3, 4, 3)
                self.b = nn.Conv2d(3, 4, 5, padding=1)
            def forward(self, x, y):
                return self.a(x) + self.b(y)
        model = Two()
        example_inputs = (torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
        """)
    d = as_json(run(f, "--format", "json"))
    out = next(n for n in d["nodes"] if n["name"] == d["output"])
    assert out["rf"]["size"] == [5, 5] and out["shape"] == [1, 4, 14, 14]


def test_missing_input_shape_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, f"model = {NET}\n")
    res = run(f)
    assert res.exit_code == 2 and "--input-shape" in res.output


@pytest.mark.parametrize("args,needle", [
    (["does/not/exist.py", "--input-shape", "3,8,8"], "does not exist"),
    (["{f}", "--input-shape", "3,a,8"], "input-shape"),
    (["{f}", "--input-shape", "3,8,8", "--node", "nosuchlayer"], "nosuchlayer"),
    (["no_such_module_xyz:thing"], "no_such_module_xyz"),
    (["torchvision:not_a_model"], "not_a_model"),
], ids=["missing-file", "bad-shape", "bad-node", "bad-module", "bad-torchvision"])
def test_bad_input_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    f = write(tmp_path, f"model = {NET}\n")
    res = run(*[a.replace("{f}", f) for a in args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_syntax_error_in_file(tmp_path: Path) -> None:
    f = write(tmp_path, "model = (\n")
    res = run(f, "--input-shape", "3,8,8")
    assert res.exit_code == 2 and "syntax error" in res.output


# -- other targets -------------------------------------------------------------
def test_torchvision_target() -> None:
    pytest.importorskip("torchvision")
    d = as_json(run("torchvision:resnet18", "--node", "layer1", "--format", "json"))
    assert d["input_shape"] == [1, 3, 224, 224]
    rf = d["modules"]["layer1"]["rf"]
    # stem: conv7 s2 p3 (7/2/3), maxpool3 s2 p1 (11/4/5), four 3x3 convs at j=4: 11 + 4*2*4 = 43
    assert rf["size"] == [43, 43] and rf["stride"] == [4, 4] and rf["padding"] == [21, 21]


def test_module_path_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "rfscope_clitest_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(HEADER + "def build():\n    return nn.Conv1d(1, 1, 4, stride=2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    d = as_json(run("rfscope_clitest_pkg.models:build", "--input-shape", "1,32", "--format", "json"))
    out = next(n for n in d["nodes"] if n["name"] == d["output"])
    assert out["rf"]["size"] == [4] and out["rf"]["stride"] == [2]


# -- output formats ------------------------------------------------------------
SHAPES = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.post = nn.Conv2d(4, 4, 3)
    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(self.fc(self.pool(y)))
        z = self.up(self.conv(x))
        return self.post(torch.cumsum(y, dim=-1)), z
model = Net()
input_shape = (1, 3, 16, 16)
"""

RF_KEYS = {"size", "stride", "padding", "center", "status"}


def test_json_shape(tmp_path: Path) -> None:
    d = as_json(run(write(tmp_path, SHAPES), "--format", "json"))
    assert d["input_shape"] == [1, 3, 16, 16]
    for n in d["nodes"]:
        assert {"name", "op", "target", "module", "shape", "rf"} <= set(n)
        if n["rf"] is not None:
            assert RF_KEYS <= set(n["rf"])
            assert all(isinstance(v, (int, float)) for k in ("size",) for v in n["rf"][k])
    mods = d["modules"]
    assert {"conv", "pool", "fc", "up", "post"} <= set(mods)
    names = {n["name"] for n in d["nodes"]}
    for m in mods.values():
        assert m["node"] in names and RF_KEYS <= set(m["rf"])
    conv = mods["conv"]["rf"]
    assert conv == {**conv, "size": [3, 3], "stride": [1, 1], "padding": [1, 1], "center": [0, 0],
                    "status": "exact"}
    # transposed conv k2 s2 after conv3: fraction as a float
    up = mods["up"]["rf"]
    assert up["stride"] == [0.5, 0.5] and up["size"] == [3, 3] and up["status"] == "exact"
    # SE-style gating: global, with the local RF
    mul = next(n for n in d["nodes"] if n["target"] == "operator.mul")
    assert mul["rf"]["status"] == "global" and mul["rf"]["size"] == [16, 16]
    assert set(mul["rf"]["local"]) == {"size", "stride", "padding", "center"}
    assert mul["rf"]["local"]["size"] == [3, 3]
    # the pooled branch alone has no local path: "local" is null
    assert mods["pool"]["rf"]["status"] == "global" and mods["pool"]["rf"]["local"] is None
    # no plugin for cumsum: unknown downstream, with a reason; listed as unsupported
    post = mods["post"]["rf"]
    assert post["status"] == "unknown" and "cumsum" in post["reason"]
    assert any("cumsum" in u for u in d["unsupported"])


def test_table_output(tmp_path: Path) -> None:
    res = run(write(tmp_path, SHAPES))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = lines[0]
    assert head.startswith("layer") and all(c in head for c in ("op", "output shape", "RF size", "stride",
                                                                  "padding", "status"))
    conv = next(line for line in lines if line.startswith("conv "))
    assert "1x4x16x16" in conv and "3x3" in conv and "exact" in conv
    up = next(line for line in lines if line.startswith("up "))
    assert "1/2x1/2" in up
    assert any(line.startswith("post") and "unknown" in line for line in lines)
    assert "unsupported" in res.output and "cumsum" in res.output


def test_strict_exits_2(tmp_path: Path) -> None:
    res = run(write(tmp_path, SHAPES), "--strict")
    assert res.exit_code == 2 and "cumsum" in res.output


def test_user_file_functions_have_readable_stable_names(tmp_path):
    import hashlib

    from rfscope.loader import _module_name

    src = ("import torch.fx, torch.nn as nn\n"
           "def double(x):\n    return x * 2\n"
           "torch.fx.wrap('double')\n"
           "class M(nn.Module):\n"
           "    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 4, 3)\n"
           "    def forward(self, x):\n        return double(self.c(x))\n"
           "model = M()\ninput_shape = (1, 3, 16, 16)\n")
    f = tmp_path / "rfs_readable_net.py"
    f.write_text(src)
    res = CliRunner().invoke(main, ["analyze", str(f), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unsupported"] == ["rfs_readable_net.double"]
    shadow = tmp_path / "json.py"  # a stem that names another module gets a path-derived name, the same every run
    shadow.write_text(src)
    want = "_rfscope_user_" + hashlib.sha1(str(shadow.resolve()).encode()).hexdigest()[:12]
    assert _module_name(shadow) == want
    res = CliRunner().invoke(main, ["analyze", str(shadow), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unsupported"] == [f"{want}.double"]


def test_a_slow_model_build_is_announced_on_stderr(tmp_path: Path) -> None:
    """Building a model that takes over a second says so (and how long it took); a fast one is silent."""
    slow = tmp_path / "slow.py"
    slow.write_text("import time, torch.nn as nn\ntime.sleep(1.5)\n"
                    "model = nn.Conv2d(1, 1, 3)\ninput_shape = (1, 1, 8, 8)\n")
    fast = tmp_path / "fast.py"
    fast.write_text("import torch.nn as nn\nmodel = nn.Conv2d(1, 1, 3)\ninput_shape = (1, 1, 8, 8)\n")
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # torch imported first: only the model file's own work is timed
        code = "import torch; from rfscope.cli import main; main()"
        return subprocess.run([sys.executable, "-c", code, "analyze", *args], capture_output=True, text=True)

    res = cli(str(slow))
    assert res.returncode == 0, res.stderr
    assert "rfscope: loading the model..." in res.stderr and "loading the model: done in" in res.stderr
    res = cli(str(fast))
    assert res.returncode == 0 and "loading the model" not in res.stderr
    res = cli(str(slow), "--quiet")
    assert res.returncode == 0 and res.stderr == "" and res.stdout == ""
