"""Bad input: a one-line error naming the problem, exit status 2, nothing half-written."""

from __future__ import annotations

import os
import warnings
from importlib.metadata import EntryPoint

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
import rfscope.trace
from rfscope.cli import main
from rfscope.core import registry as registry_mod

SMALL = """
import torch.nn as nn
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5))
input_shape = (1, 3, 32, 32)
"""


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def _one_line_error(code: int, out: str, *needles: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("rfscope: error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.py"
    p.write_text(SMALL)
    return p


def test_missing_file(tmp_path):
    _one_line_error(*_run("analyze", str(tmp_path / "nope.py")), "nope.py", "does not exist")


def test_not_a_python_file(tmp_path):
    p = tmp_path / "model.txt"
    p.write_text("x")
    _one_line_error(*_run("analyze", str(p)), "not a Python file")


def test_syntax_error_shows_line(tmp_path):
    p = tmp_path / "bad.py"
    p.write_text("import torch\n\ndef f(:\n    pass\n")
    _one_line_error(*_run("analyze", str(p)), "syntax error", "line 3")


def test_exception_while_building(tmp_path):
    p = tmp_path / "boom.py"
    p.write_text("import torch.nn as nn\ndef build_model():\n    raise ValueError('no GPU here, sorry')\n")
    _one_line_error(*_run("analyze", str(p), "--input-shape", "3,8,8"), "build_model", "no GPU here, sorry")


def test_no_model_and_several_candidates(tmp_path):
    p = tmp_path / "empty.py"
    p.write_text("import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    _one_line_error(*_run("analyze", str(p)), "no model found", "Net")
    q = tmp_path / "two.py"
    q.write_text("import torch.nn as nn\na = nn.Conv2d(3, 3, 3)\nb = nn.Conv2d(3, 3, 3)\n")
    _one_line_error(*_run("analyze", str(q)), "several", "a, b")


def test_attr_missing_or_not_a_module(small):
    _one_line_error(*_run("analyze", f"{small}:nothing"), "no attribute 'nothing'", "model")
    _one_line_error(*_run("analyze", f"{small}:input_shape"), "input_shape", "not a torch.nn.Module")


@pytest.mark.parametrize("shape,needle", [("3,a,32", "not a comma-separated list"), ("3,0,32", "zero or negative"),
                                          ("3,-4,32", "zero or negative"), (",", "at least one size")])
def test_input_shape_malformed(small, shape, needle):
    _one_line_error(*_run("analyze", str(small), "--input-shape", shape), needle)


def test_input_shape_wrong_channels_names_layer(small):
    _one_line_error(*_run("analyze", str(small), "--input-shape", "1,32,32"),
                    "layer '0'", "expects 3 input channels but gets 1", "--input-shape 3,H,W")


def test_input_shape_too_small_names_layer_and_minimum(small):
    # conv3 -> 6x6, pool2 -> 3x3, then a 5x5 conv needs 5x5; the model needs 12x12 (k3 -> 10, pool -> 5, k5 -> 1;
    # 11 gives 9, 4: too small)
    _one_line_error(*_run("analyze", str(small), "--input-shape", "3,8,8"),
                    "too small", "layer '3'", "3x3", "at least 5x5", "at least 12x12", "--input-shape 3,12,12")
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5))
    assert rfscope.analyze(net, (1, 3, 12, 12)).rf("3").size == (12, 12)
    with pytest.raises(rfscope.core.errors.TraceError, match="at least 12x12"):
        rfscope.analyze(net, (1, 3, 11, 11))
    _one_line_error(*_run("analyze", str(small), "--input-shape", "3,8,40"), "the whole model", "12x40")


def test_unknown_node(small):
    _one_line_error(*_run("analyze", str(small), "--node", "nonexistent"), "'nonexistent'")


def test_weights_missing_corrupt_mismatched(small, tmp_path):
    _one_line_error(*_run("analyze", str(small), "--weights", str(tmp_path / "none.pt")), "does not exist")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    _one_line_error(*_run("analyze", str(small), "--weights", str(bad)), "cannot read checkpoint", "weights_only")
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5), nn.Conv2d(8, 2, 1))
    ck = tmp_path / "other.pt"
    torch.save(other.state_dict(), ck)
    _one_line_error(*_run("analyze", str(small), "--weights", str(ck)), "unexpected keys: 4.weight, 4.bias")
    sd = other.state_dict()
    del sd["0.bias"]
    del sd["4.weight"], sd["4.bias"]
    torch.save(sd, ck)
    _one_line_error(*_run("analyze", str(small), "--weights", str(ck)), "missing keys: 0.bias")
    shaped = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5))
    torch.save(shaped.state_dict(), ck)
    _one_line_error(*_run("analyze", str(small), "--weights", str(ck)), "wrong shape", "0.weight (4, 3, 3, 3)")
    # a pickled object that is not plain tensors is refused by weights_only=True
    torch.save({"state_dict": shaped.state_dict(), "fn": nn.ReLU()}, ck)
    _one_line_error(*_run("analyze", str(small), "--weights", str(ck)), "weights_only", "pickled Python objects",
                    "torch.nn.modules.activation.ReLU")


def test_weights_loaded_into_a_copy(small, tmp_path):
    from rfscope.loader import load_model

    model = load_model(str(small)).model
    trained = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5))
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(0.25)
    ck = tmp_path / "trained.pt"
    torch.save({"state_dict": trained.state_dict()}, ck)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cp = rfscope.load_weights(model, ck)
    assert cp is not model
    assert all(torch.equal(v, torch.full_like(v, 0.25)) for v in cp.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    code, out = _run("analyze", str(small), "--weights", str(ck), "--format", "json")
    assert code == 0, out
    with torch.device("meta"):
        meta_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5))
    real = rfscope.load_weights(meta_model, ck)
    assert real[0].weight.device.type == "cpu" and float(real[0].weight[0, 0, 0, 0].detach()) == 0.25
    assert meta_model[0].weight.device.type == "meta"


def test_check_init_on_meta_model(tmp_path):
    if "--check-init" not in CliRunner().invoke(main, ["analyze", "--help"]).output:
        pytest.skip("--check-init not available")
    p = tmp_path / "meta.py"
    p.write_text("import torch, torch.nn as nn\nwith torch.device('meta'):\n"
                 "    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())\ninput_shape = (1, 3, 16, 16)\n")
    _one_line_error(*_run("analyze", str(p), "--check-init"), "meta")
    assert _run("analyze", str(p))[0] == 0  # the RF analysis itself works on meta


def test_diagram_output_path_missing_dir_or_not_writable(small, tmp_path):
    if "--diagram" not in CliRunner().invoke(main, ["analyze", "--help"]).output:
        pytest.skip("--diagram not available")
    target = tmp_path / "missing" / "out.dot"
    _one_line_error(*_run("analyze", str(small), "--diagram", str(target)), "missing")
    assert not target.parent.exists()
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            _one_line_error(*_run("analyze", str(small), "--diagram", str(ro / "x.dot")), "writ")
            assert not list(ro.iterdir())
        finally:
            ro.chmod(0o700)


def test_probe_out_not_a_directory(small, tmp_path):
    helptext = CliRunner().invoke(main, ["probe", "--help"]).output
    if "--out" not in helptext:
        pytest.skip("probe --out not available")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    _one_line_error(*_run("probe", str(small), "--mode", "erf", "--samples", "2", "--out", str(blocker / "x"),
                          "--input-shape", "3,16,16"), "a directory", str(blocker))
    assert blocker.read_text() == "not a folder"


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.custom = Custom()
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(self.custom(self.conv(x)))


def _raising_plugin():
    def rf(ctx):
        raise ZeroDivisionError("plugin bug")

    return rfscope.Plugin("test-raising-plugin", (Custom,), rf=rf)


def test_plugin_that_raises_is_named_and_others_still_reported(tmp_path):
    reg = rfscope.Registry()
    reg.ensure_loaded()
    reg.register(_raising_plugin())
    rep = rfscope.analyze(WithCustom(), (1, 3, 16, 16), registry=reg)
    assert rep.rf("conv").size == (3, 3)
    assert rep.rf("custom").status == "unknown"
    assert any("test-raising-plugin" in e and "custom" in e and "plugin bug" in e for e in rep.errors)
    with pytest.raises(rfscope.PluginError, match="test-raising-plugin.*custom"):
        rfscope.analyze(WithCustom(), (1, 3, 16, 16), registry=reg, strict=True)
    # through the CLI: the default registry, cleaned up afterwards
    p = tmp_path / "m.py"
    p.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                 "from test_bad_input import WithCustom\nmodel = WithCustom()\ninput_shape = (1, 3, 16, 16)\n")
    default = rfscope.default_registry()
    default.ensure_loaded()
    default.register(_raising_plugin())
    try:
        code, out = _run("analyze", str(p))
        assert code == 0 and "test-raising-plugin" in out and "plugin bug" in out
        _one_line_error(*_run("analyze", str(p), "--strict"), "test-raising-plugin", "custom")
    finally:
        default.unregister("test-raising-plugin")


_BROKEN = EntryPoint(name="broken_thirdparty", value="not_a_module_xyz:register",
                     group=registry_mod.ENTRY_POINT_GROUP)


def test_broken_entry_point_warned_and_skipped(monkeypatch):
    real = registry_mod.entry_points

    def fake(group):
        return [*real(group=group), _BROKEN]

    monkeypatch.setattr(registry_mod, "entry_points", fake)
    reg = rfscope.Registry()
    with pytest.warns(RuntimeWarning, match="broken_thirdparty.*RFSCOPE_DISABLE_PLUGIN_AUTOLOAD"):
        reg.ensure_loaded()
    assert reg.lookup_module(nn.Conv2d(1, 1, 1)) is not None  # built-ins still loaded
    assert any("broken_thirdparty" in e for e in reg.load_errors)
    monkeypatch.setenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg2 = rfscope.Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg2.ensure_loaded()
    assert not reg2.load_errors
    rep = rfscope.analyze(nn.Conv2d(3, 3, 3), (1, 3, 8, 8), registry=reg2)
    assert rep.rf("output").size == (3, 3)


class _TiedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight


def test_weights_into_meta_model_keep_ties(tmp_path):
    real = _TiedLinear()
    ck = tmp_path / "tied.pt"
    torch.save(real.state_dict(), ck)
    with torch.device("meta"):
        m = _TiedLinear()
    cp = rfscope.load_weights(m, ck)
    assert cp.a.weight is cp.b.weight and cp.a.weight.device.type == "cpu"
    assert torch.equal(cp.a.weight, real.a.weight) and torch.equal(cp.b.bias, real.b.bias)
    assert len(list(cp.parameters())) == 3  # a.weight (shared), a.bias, b.bias


@pytest.mark.parametrize("net,shape,needle", [
    (lambda: nn.Sequential(nn.BatchNorm2d(3)), (1, 1, 8, 8),
     "layer '0' (BatchNorm2d) expects 3 input channels but gets 1"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2)), (1, 3, 8, 8),
     "layer '2' (Linear) expects 10 input features (last dim) but gets 144"),  # 4 * 6 * 6
    (lambda: nn.Sequential(nn.GroupNorm(2, 4)), (1, 3, 8, 8), "layer '0' (GroupNorm) expects 4 input channels"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Conv2d(4, 4, 1)),
     (1, 3, 8, 8), "layer '3' (Conv2d) expects a 3-d or 4-d input but gets a 2-d one"),
])
def test_layer_input_mismatch_names_layer(net, shape, needle):
    with pytest.raises(rfscope.core.errors.TraceError) as ei:
        rfscope.analyze(net(), shape)
    assert str(ei.value).splitlines()[0].startswith(needle)


def test_uninitialised_lazy_layers_named(tmp_path):
    """Lazy layers have no parameter shapes before a first forward pass: say so, not 'expects 0 channels'."""
    p = tmp_path / "lazy.py"
    p.write_text("import torch.nn as nn\nmodel = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConv2d(4, 3))\n"
                 "input_shape = (1, 3, 16, 16)\n")
    _one_line_error(*_run("analyze", str(p)), "lazy layers", "'0' (LazyConv2d)", "'2' (LazyConv2d)", "forward pass")
    net = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConv2d(4, 3))
    net(torch.zeros(1, 3, 16, 16))  # materialised: analysed as usual
    assert rfscope.analyze(net, (1, 3, 16, 16)).rf("2").size == (5, 5)


# -- Ctrl-C: one line, exit status 130, no traceback, at any moment ---------------------

_CLI = "import sys; from rfscope.cli import main; sys.exit(main())"


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C's default action, as a command typed in a terminal has.  A
    test run started in the background by a shell without job control inherits SIGINT *ignored*,
    and Python then never raises KeyboardInterrupt (the CLI rightly leaves that choice alone)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(args: list[str], after: float = 0.0, ready: str | None = None) -> tuple[int, str]:
    """Run the CLI in a subprocess and send SIGINT ``after`` seconds (after ``ready`` is printed)."""
    import signal
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-c", _CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_as_from_a_terminal)
    try:
        if ready is not None:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert ready in line, line
        time.sleep(after)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


_SLOW_BUILD = """
import time
import torch.nn as nn
print("building", flush=True)
time.sleep(60)
model = nn.Conv2d(3, 4, 3)
"""

_SLOW_FORWARD = """
import time
import torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
    def forward(self, x):
        print("forward", flush=True)
        time.sleep(60)
        return self.c(x)
model = M()
input_shape = (1, 3, 16, 16)
"""


@pytest.mark.parametrize("when", ["importing", "building", "tracing", "probing"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, when):
    f = tmp_path / "m.py"
    f.write_text(_SLOW_BUILD if when == "building" else _SLOW_FORWARD)
    if when == "importing":  # torch takes seconds to import: interrupt it (or what follows; still running)
        code, err = _interrupt(["analyze", "torchvision:resnet18", "--input-shape", "3,64,64"], after=1.0)
    elif when == "building":
        code, err = _interrupt(["analyze", str(f)], ready="building")
    elif when == "tracing":
        code, err = _interrupt(["analyze", str(f)], ready="forward")
    else:
        code, err = _interrupt(["probe", str(f), "--mode", "erf", "--out", str(tmp_path / "o"), "--quiet"],
                               ready="forward")
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip() == "rfscope: interrupted", err



def test_the_cli_starts_without_torch():
    """``rfscope --help`` is fast, and a Ctrl-C while torch loads happens inside a command (one line)."""
    import subprocess
    import sys

    code = "import sys, rfscope.cli; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_python_m_rfscope_probe_is_rfscope_probe(tmp_path):
    """``python -m rfscope.probe`` runs the probe command alone: same errors, exit statuses and Ctrl-C."""
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "rfscope.probe", "--bogus"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Usage: rfscope probe [OPTIONS] TARGET" in bad.stderr, bad.stderr
    missing = subprocess.run([sys.executable, "-m", "rfscope.probe", str(tmp_path / "none.py")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith("rfscope: error: ") and len(missing.stderr.strip().splitlines()) == 1
    f = tmp_path / "m.py"
    f.write_text(_SLOW_FORWARD)
    p = subprocess.Popen([sys.executable, "-m", "rfscope.probe", str(f), "--mode", "exact"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)
    try:
        assert p.stdout is not None and "forward" in p.stdout.readline()
        p.send_signal(__import__("signal").SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err.strip() == "rfscope: interrupted", err

def test_bad_numbers_are_one_line_errors_not_internal(small):
    _one_line_error(*_run("analyze", str(small), "--input-shape", "3,99999999999999999999999,9"),
                    "--input-shape", "too large")
    _one_line_error(*_run("analyze", str(small), "--input-shape", "3,300000000,1000000000"),
                    "overflowed", "--input-shape")
    code, out = _run("analyze", str(small), "--input-shape", "3,99999999999999,9")
    _one_line_error(code, out, "input too small")
    for args in (["--batch-size", "-3"], ["--batch-size", "0"], ["--samples", "-1"]):
        code, out = _run("probe", str(small), *args)
        _one_line_error(code, out, args[0], "at least 1")
        assert "internal error" not in out


def test_probe_without_a_gradient_path_is_a_user_error(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import torch, torch.nn as nn\n"
                 "class M(nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 8, 3)\n"
                 "    def forward(self, x):\n        return self.c(torch.zeros_like(x))\n"
                 "model = M()\ninput_shape = (1, 3, 16, 16)\n")
    for args in ([], ["--mode", "erf", "--out", str(tmp_path / "o"), "--quiet", "--samples", "2"]):
        code, out = _run("probe", str(p), *args)
        _one_line_error(code, out, "no gradient reaches the input")
        assert "internal error" not in out


def test_mistyped_leaf_is_an_error_with_close_matches(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import torch.nn as nn\n"
                 "class M(nn.Module):\n"
                 "    def __init__(self):\n        super().__init__()\n"
                 "        self.stem = nn.Conv2d(3, 8, 3)\n"
                 "        self.body = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU())\n"
                 "    def forward(self, x):\n        return self.body(self.stem(x))\n"
                 "model = M()\ninput_shape = (1, 3, 16, 16)\n")
    _one_line_error(*_run("analyze", str(p), "--leaf", "bodi"), "--leaf 'bodi'", "did you mean body")
    _one_line_error(*_run("analyze", str(p), "--leaf", "body.0", "--leaf", "stm"), "'stm'", "stem")
    _one_line_error(*_run("analyze", str(p), "--leaf", "qqqqqq"), "'qqqqqq'", "not a submodule path")
    code, out = _run("analyze", str(p), "--leaf", "body")
    assert code == 0 and "body " in out, out


def test_an_error_left_by_a_ctrl_c_inside_an_import_is_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands inside a C extension's import (numpy's, under torch's) can surface as an
    unrelated ImportError ("cannot load module more than once per process"): once Ctrl-C was seen,
    any error is 'rfscope: interrupted', exit 130, never an internal error (the race the
    test_ctrl_c 'importing' case hits now and then, made deterministic)."""
    import signal
    import threading

    import click

    from rfscope import cli_support as cs

    @click.command(cls=cs.InterruptibleCommand)
    @click.option("--debug", is_flag=True)
    @cs.handle_errors
    def cmd(debug: bool) -> None:
        raise ImportError("cannot load module more than once per process")

    before = signal.getsignal(signal.SIGINT)
    try:
        monkeypatch.setattr(cs, "SIGINT_SEEN", threading.Event())
        r = CliRunner().invoke(cmd, [])
        assert r.exit_code == 2 and "internal error" in r.output  # without a Ctrl-C: a real error
        cs.SIGINT_SEEN.set()
        r = CliRunner().invoke(cmd, [])
        assert r.exit_code == 130 and r.output.strip() == "rfscope: interrupted", r.output
    finally:
        signal.signal(signal.SIGINT, before)
