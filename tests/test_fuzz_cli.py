"""Fuzz the CLI with random arguments and random small model files.

Whatever the input: no traceback without --debug, exit status 0, 1 or 2, and an
error (exit 2) is one ``rfscope: error:`` line that names the problem.
"""

from __future__ import annotations

import pathlib
import tempfile

import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfscope.cli import main

LAYERS = [
    "nn.Conv2d({c}, 4, 3)", "nn.Conv2d({c}, 4, 3, stride=2, padding=1)", "nn.MaxPool2d(2)", "nn.ReLU()",
    "nn.Conv2d({c}, 4, 5, dilation=2)", "nn.AvgPool2d(3)", "nn.BatchNorm2d({c})", "nn.Upsample(scale_factor=2)",
    "nn.AdaptiveAvgPool2d(1)", "nn.Flatten()", "nn.Dropout(0.1)", "nn.ConvTranspose2d({c}, 4, 3, stride=2)",
]
BROKEN = [
    "",                                             # no model at all
    "model = 3\n",                                  # not a module
    "def build_model(:\n",                          # syntax error
    "def build_model():\n    raise RuntimeError('cannot build')\n",
    "import sys\nsys.exit(3)\n",
    "a = nn.ReLU()\nb = nn.ReLU()\n",              # several candidates
    "model = nn.Conv2d(3, 4, 3)\ninput_shape = 'oops'\n",
]

#: models symbolic_trace cannot follow (the fallback tracers can)
FANCY = [
    "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 4, 3)\n"
    "    def forward(self, x):\n        return self.c(x) if x.shape[-1] > 8 else x\nmodel = M()\n"
    "input_shape = (1, 3, 16, 16)\n",
    "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 4, 3)\n"
    "    def forward(self, x):\n        return self.c(x) if x.mean() > -1e9 else x\nmodel = M()\n"
    "input_shape = (1, 3, 16, 16)\n",
]


@st.composite
def model_files(draw):
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return "import torch\nimport torch.nn as nn\n" + draw(st.sampled_from(BROKEN))
    if kind == 1:
        return "import torch\nimport torch.nn as nn\n" + draw(st.sampled_from(FANCY))
    layers = []
    c0 = c = draw(st.sampled_from([1, 3]))
    for _ in range(draw(st.integers(1, 4))):
        tmpl = draw(st.sampled_from(LAYERS))
        layers.append(tmpl.format(c=c))
        if "Conv" in tmpl:
            c = 4
    body = f"model = nn.Sequential({', '.join(layers)})\n"
    if draw(st.integers(0, 3)) > 0:
        ch = c0 if draw(st.integers(0, 3)) > 0 else 4 - c0
        body += f"input_shape = (1, {ch}, {draw(st.integers(1, 40))}, {draw(st.integers(1, 40))})\n"
    return "import torch\nimport torch.nn as nn\n" + body


SHAPES = st.one_of(
    st.sampled_from(["3,16,16", "1,16,16", "3,2,2", "3,0,8", "3,-1,8", "a,b", "3", "", "3,16", "3,8,8,8", "3x16x16",
                     "3,32,32", "1,32,32"]),
    st.text(alphabet="0123456789,x- ", max_size=8),
)
OPTIONS = st.lists(st.one_of(
    st.tuples(st.just("--input-shape"), SHAPES),
    st.tuples(st.just("--node"), st.sampled_from(["0", "1", "output", "nope", "0.weight", ""])),
    st.tuples(st.just("--leaf"), st.sampled_from(["0", "1", "missing"])),
    st.tuples(st.just("--format"), st.sampled_from(["json", "table", "json", "xml"])),
    st.tuples(st.just("--trace"), st.sampled_from(["auto", "export", "symbolic_trace", "make_fx", "bogus"])),
    st.tuples(st.just("--weights"), st.sampled_from(["missing.pt", "garbage.pt", "good.pt"])),
    st.tuples(st.just("--strict")),
    st.tuples(st.just("--bogus-option")),
), max_size=2)
#: an error message names its subject: one of these words (or the file) appears in it
SUBJECTS = ("--", "option", "input", "shape", "layer", "model", "node", "checkpoint", "plugin", "trace", "module",
            "attribute", "syntax", "file", "build", "candidates", ".py", "channels", "strict")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src=model_files(), opts=OPTIONS, attr=st.sampled_from(["", "", "", ":model", ":nothing", ":nn"]))
def test_cli_never_tracebacks(src, opts, attr):
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "m.py"
        path.write_text(src)
        (pathlib.Path(d) / "garbage.pt").write_bytes(b"\x00garbage")
        torch.save({"w": torch.zeros(2)}, pathlib.Path(d) / "good.pt")  # a valid file, wrong keys for any model
        args = ["analyze", f"{path}{attr}"]
        for o in opts:
            args.extend(o)
        args = [a.replace("missing.pt", str(pathlib.Path(d) / "missing.pt"))
                .replace("garbage.pt", str(pathlib.Path(d) / "garbage.pt"))
                .replace("good.pt", str(pathlib.Path(d) / "good.pt")) for a in args]
        res = CliRunner().invoke(main, args)
    out = res.output
    assert "Traceback" not in out, (args, out)
    assert res.exit_code in (0, 1, 2), (args, res.exit_code, out, res.exception)
    if res.exit_code == 2:
        errors = [ln for ln in out.splitlines() if "rfscope: error:" in ln or ln.startswith("Error:")]
        assert len(errors) == 1, (args, out)
        msg = errors[0].split("rror:", 1)[1].strip()
        assert len(msg) > 15 and "internal error" not in msg, (args, out)
        assert any(w in msg for w in SUBJECTS), (args, out)
    else:
        assert res.output.strip(), args  # a report was printed
