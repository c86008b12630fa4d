"""Third-party plugins through the ``rfscope.plugins`` entry-point group.

A fake distribution (a package plus a ``.dist-info`` with ``entry_points.txt``)
is written into ``tmp_path`` and put on ``sys.path``: ``importlib.metadata``
finds it exactly as it finds an installed package.  Each test uses a fresh
:class:`rfscope.Registry`, so the process-wide default is never touched.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn as nn

import rfscope
from rfscope import Plugin, PluginError, Registry, Unsupported

LAYERS = """
import torch
import torch.nn as nn


class BlurPool(nn.Module):
    '''Low-pass (5 taps) then subsample by 2; its forward uses an op rfscope has no plugin for.'''

    def forward(self, x):
        return torch.cumsum(x, dim=-1)[..., ::2]
"""

PLUGIN = """
from rfscope.core import rf
from rfscope.core.ops import local
from {pkg}.layers import BlurPool


def _rf(ctx):
    return local(ctx, {{-1: lambda a: rf.conv(a, k=5, s=2, p=2)}})


def register(registry):
    registry.add("{pkg}.blurpool", [BlurPool], rf=_rf)
"""


def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool = False,
              extra: dict[str, str] | None = None) -> ModuleType:
    """Write package ``rfs_ext_<id>`` and its dist-info; return the package's ``layers`` module.

    ``extra`` maps more entry-point names to the source of a module ``<name>.py`` in the package
    whose ``register`` the entry point names (``{pkg}`` in the source is the package name).
    """
    pkg = f"rfs_ext_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site"
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "layers.py").write_text(LAYERS)
    (root / pkg / "plugin.py").write_text(PLUGIN.format(pkg=pkg))
    info = root / f"{pkg}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    eps = f"[rfscope.plugins]\n{pkg} = {pkg}.plugin:register\n"
    if broken:
        eps += f"{pkg}_broken = {pkg}.missing_module:register\n"
    for name, src in (extra or {}).items():
        (root / pkg / f"{name}.py").write_text(src.replace("{pkg}", pkg))
        eps += f"{name} = {pkg}.{name}:register\n"
    (info / "entry_points.txt").write_text(eps)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    layers = importlib.import_module(f"{pkg}.layers")
    return layers


class Net(nn.Module):
    def __init__(self, blur: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.blur = blur
        self.head = nn.Conv1d(2, 2, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.blur(self.conv(x)))


def analyze(model: nn.Module, reg: Registry) -> rfscope.Report:
    return rfscope.analyze(model, input_shape=(1, 2, 32), registry=reg)


def test_third_party_plugin_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    layers = make_dist(tmp_path, monkeypatch)
    reg = Registry()
    rep = analyze(Net(layers.BlurPool()), reg)
    # conv3 p1 (3/1/1), blur k5 s2 p2 (7/2/3), conv3 (11/2/3)
    r = rep.rf("blur")
    assert (r.size, r.stride, r.padding, r.status) == ((7,), (2,), (3,), "exact")
    assert rep.rf("head").size == (11,)
    # the custom class is a leaf: one call_module node, nothing traced inside it
    blur_nodes = [n for n, a in rep.graph.nodes(data=True) if (a["module"] or "").startswith("blur")]
    assert len(blur_nodes) == 1 and rep.graph.nodes[blur_nodes[0]]["op"] == "call_module"
    assert "blurpool" in (rep.records[blur_nodes[0]].plugin or "")


DENSE = '''
import torch
import torch.nn as nn

from rfscope.core.initview import WeightView
from rfscope.core.ops import same_state


class Dense(nn.Module):
    """A dense map whose weight has a name of its own."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(c_out, c_in))

    def forward(self, x):
        return x @ self.kernel.t()


def _view(ctx):
    w = ctx.module.kernel
    return WeightView(w, None, ctx.name(w) or "kernel")


def register(registry):
    registry.add("{pkg}.dense", [Dense], rf=same_state, init_view=_view)
'''


def test_third_party_init_view_gets_its_weights_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    layers = make_dist(tmp_path, monkeypatch, extra={"dense_plugin": DENSE})
    mod = importlib.import_module(layers.__name__.rsplit(".", 1)[0] + ".dense_plugin")
    net = nn.Sequential(mod.Dense(4, 6), nn.ReLU(), nn.Linear(6, 2))
    nn.init.constant_(net[0].kernel, 0.5)
    nn.init.constant_(net[2].weight, 1.0)
    x = torch.randn(2, 4)
    # the plugin's view names the weight: its constant units are judged through the ReLU
    findings = rfscope.check_init(net, example_inputs=(x,), registry=Registry(), forward=False)
    assert [(f.check, f.param) for f in findings] == [("symmetric-units", "0.kernel")]
    # without the plugin the layer is not judged (and the process-wide registry never saw it)
    monkeypatch.setenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert rfscope.check_init(net, example_inputs=(x,), registry=Registry(), forward=False) == []


def test_without_the_plugin_the_module_is_traced_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    layers = make_dist(tmp_path, monkeypatch)
    reg = Registry()
    rep = analyze(Net(layers.BlurPool()), reg)
    # built-in plugins still load; the third-party one does not
    assert rep.rf("conv").status == "exact"
    assert reg.lookup_module(layers.BlurPool()) is None
    r = rep.rf("head")
    assert r.status == "unknown" and "cumsum" in (r.reason or "")
    assert any("cumsum" in u for u in rep.unsupported)
    assert any(n.startswith("cumsum") for n in rep.records)  # traced inside BlurPool


def test_broken_entry_point_is_warned_and_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    layers = make_dist(tmp_path, monkeypatch, broken=True)
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="_broken"):
        reg.ensure_loaded()
    assert len(reg.load_errors) == 1 and "missing_module" in reg.load_errors[0]
    # the good plugin of the same distribution and the built-ins still work
    assert analyze(Net(layers.BlurPool()), reg).rf("head").size == (11,)


HALF = """
import torch.nn as nn
import torch.nn.functional as F

from rfscope.trace.shortcuts import register_function_rule


def half_fn(x):
    return x


def register(registry):
    registry.add("half.relu", [nn.ReLU], rf=lambda ctx: ctx.unknown("half-registered relu"), override=True)
    registry.add("half.conv", [nn.Conv1d], rf=lambda ctx: ctx.first, macs=lambda ctx: -999, override=True)
    registry.add("half.fn", [half_fn], rf=lambda ctx: ctx.first)
    registry.when_imported("rfs_never_imported_module", lambda reg: None)
    register_function_rule(half_fn, lambda x: x)
    raise RuntimeError("failed half-way")
"""


def test_failing_entry_point_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point that raises after registering leaves nothing behind: no plugin, override,
    deferred registration or function rule of it stays, and the analysis is the one without it."""
    from rfscope.core import shape_rules as fastshape

    monkeypatch.setenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Conv1d(2, 2, 3))
    clean = rfscope.analyze(net, input_shape=(1, 1, 16), registry=Registry())
    monkeypatch.delenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD")
    layers = make_dist(tmp_path, monkeypatch, extra={"zz_half": HALF})
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="zz_half.*failed half-way"):
        reg.ensure_loaded()
    assert not [p.name for p in reg.plugins() if p.name.startswith("half.")]
    relu, blur = reg.lookup_module(nn.ReLU()), reg.lookup_module(layers.BlurPool())
    assert relu is not None and relu.name != "half.relu"
    assert blur is not None and blur.name.endswith(".blurpool")  # the good entry point stays
    assert not any(d[0] == "rfs_never_imported_module" for d in reg._deferred)
    half = sys.modules[f"{layers.__name__.rsplit('.', 1)[0]}.zz_half"]
    assert half.half_fn not in fastshape._FN_RULES
    rep = rfscope.analyze(net, input_shape=(1, 1, 16), registry=reg)
    assert rep.to_json() == clean.to_json()
    assert rep.rf("2").size == (5,) and rep.summary.macs > 0
    assert len(reg.load_errors) == 1 and "none of its registrations" in reg.load_errors[0]


EXITS = {
    "sys_exit_at_import": "import sys\nsys.exit(3)\n\ndef register(registry):\n    pass\n",
    "keyboard_interrupt": "import torch.nn as nn\n\ndef register(registry):\n"
                          "    registry.add('ki.relu', [nn.ReLU], rf=lambda ctx: ctx.first, override=True)\n"
                          "    raise KeyboardInterrupt\n",
    "system_exit_in_register": "def register(registry):\n    raise SystemExit('bye')\n",
}


@pytest.mark.parametrize("name", sorted(EXITS))
def test_system_exit_and_keyboard_interrupt_are_contained(name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RFSCOPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    layers = make_dist(tmp_path, monkeypatch, extra={name: EXITS[name]})
    reg = Registry()
    with pytest.warns(RuntimeWarning, match=f"skipping plugin entry point {name!r}"):
        reg.ensure_loaded()
    assert len(reg.load_errors) == 1 and name in reg.load_errors[0]
    relu = reg.lookup_module(nn.ReLU())
    assert relu is not None and relu.name != "ki.relu"
    assert analyze(Net(layers.BlurPool()), reg).rf("head").size == (11,)


def _macs_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 2, 3), Custom(), nn.Conv1d(2, 2, 3))


@pytest.mark.parametrize("bad", [-999_999_604_800, -1, 2.5, 3.0, True, "12", float("nan"), [4]])
def test_plugin_macs_must_be_a_non_negative_integer(bad: object) -> None:
    """A plugin's MACs that are not a count make that node's MACs unknown, with a warning: never a
    truncated, negative or boolean count in the total."""
    reg = Registry()
    reg.add("custom", [Custom], rf=lambda ctx: ctx.first, macs=lambda ctx: bad)  # type: ignore[arg-type,return-value]
    rep = rfscope.analyze(_macs_net(), input_shape=(1, 1, 16), registry=reg)
    node = rep.records[rep.modules["1"]]
    assert node.macs is None
    assert any("custom" in e and "non-negative integer" in e and repr(node.name) in e for e in rep.errors)
    convs = [rep.records[rep.modules[k]].macs for k in ("0", "2")]
    assert all(c for c in convs) and rep.summary.macs == sum(c or 0 for c in convs)
    with pytest.raises(PluginError, match="non-negative integer"):
        rfscope.analyze(_macs_net(), input_shape=(1, 1, 16), registry=reg, strict=True)


@pytest.mark.parametrize("good", [0, 7, None])
def test_plugin_macs_integer_or_none_is_kept(good: object) -> None:
    np = pytest.importorskip("numpy")
    for value in (good, np.int64(good) if good is not None else None):
        reg = Registry()
        reg.add("custom", [Custom], rf=lambda ctx: ctx.first, macs=lambda ctx, v=value: v)  # type: ignore[misc]
        rep = rfscope.analyze(_macs_net(), input_shape=(1, 1, 16), registry=reg)
        macs = rep.records[rep.modules["1"]].macs
        assert macs == good and type(macs) in (int, type(None))
        assert not rep.errors


def test_duplicate_registration_needs_override() -> None:
    reg = Registry()
    reg.ensure_loaded()
    with pytest.raises(PluginError, match="override=True"):
        reg.add("mine", [nn.ReLU], rf=lambda ctx: ctx.first)
    # override=True replaces the built-in rule, and the new rule is used
    reg.add("mine", [nn.ReLU], rf=lambda ctx: ctx.unknown("custom relu rule"), override=True)
    assert getattr(reg.lookup_module(nn.ReLU()), "name", None) == "mine"
    rep = rfscope.analyze(nn.Sequential(nn.Conv1d(1, 1, 3), nn.ReLU()), input_shape=(1, 1, 16), registry=reg)
    assert rep.rf("1").status == "unknown" and rep.rf("1").reason == "custom relu rule"
    assert getattr(rfscope.default_registry().lookup_module(nn.ReLU()), "name", None) not in (None, "mine")


def test_registration_errors() -> None:
    reg = Registry()
    with pytest.raises(PluginError, match="Method"):
        reg.register(Plugin("bad", ("view",)))
    with pytest.raises(PluginError, match="no targets"):
        reg.register(Plugin("empty", ()))


class Custom(nn.Module):
    def forward(self, x):  # type: ignore[no-untyped-def]
        return x.flip(-1)


def test_plugin_raising_unsupported_gives_unknown_with_reason() -> None:
    reg = Registry()

    def rule(ctx: rfscope.OpContext) -> object:
        raise Unsupported("flip reverses positions")

    reg.add("custom", [Custom], rf=rule)
    rep = rfscope.analyze(nn.Sequential(nn.Conv1d(1, 1, 3), Custom(), nn.Conv1d(1, 1, 3)),
                          input_shape=(1, 1, 16), registry=reg)
    for name in ("1", "2"):
        r = rep.rf(name)
        assert r.status == "unknown" and "flip reverses positions" in (r.reason or "")
    assert not any(n.startswith("flip") for n in rep.records)  # kept as a leaf


def test_subclass_that_overrides_forward_does_not_inherit(monkeypatch: pytest.MonkeyPatch) -> None:
    class MyConv(nn.Conv1d):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return super().forward(x)[..., 1:]

    rep = rfscope.analyze(MyConv(1, 1, 3), input_shape=(1, 1, 16), registry=Registry())
    r = rep.rf("output")
    # traced through: conv3 then crop 1 -> unit i sees [i+1, i+3]
    assert r.size == (3,) and r.padding == (-1,)


@pytest.fixture(autouse=True)
def _no_leak() -> object:
    before = set(sys.modules)
    yield
    for m in set(sys.modules) - before:
        if m.startswith("rfs_ext_"):
            del sys.modules[m]


def test_per_analysis_plugin_overrides_leave_the_registry_alone() -> None:
    """``analyze(..., plugins=[...])`` replaces a plugin for one analysis only, as
    ``FlopCounterMode(custom_mapping=...)`` does: the shared registry is not touched."""
    from rfscope.core import rf
    from rfscope.core.ops import local

    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Conv2d(1, 1, 3))
    # pretend the ReLU were a 3-tap blur along each axis
    blur = rfscope.Plugin("blur-relu", (nn.ReLU,), rf=lambda ctx: local(ctx, {-2: lambda a: rf.conv(a, 3, p=1),
                                                                               -1: lambda a: rf.conv(a, 3, p=1)}))
    reg = rfscope.default_registry()
    before = reg.lookup_module(nn.ReLU())
    mine = rfscope.analyze(net, input_shape=(1, 1, 16, 16), plugins=[blur])
    plain = rfscope.analyze(net, input_shape=(1, 1, 16, 16))
    assert mine.rf("output").size == (7, 7) and plain.rf("output").size == (5, 5)
    assert reg.lookup_module(nn.ReLU()) is before
    copy = reg.copy()
    copy.register(rfscope.Plugin("x", (nn.ReLU,), override=True))
    assert reg.lookup_module(nn.ReLU()) is before and copy.lookup_module(nn.ReLU()).name == "x"
