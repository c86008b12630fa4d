"""The user's model is untouched by analyze / check_init / probe.

State dict (a hash of every tensor), requires_grad flags, training flags, registered
hooks and devices are compared before and after, on several models: plain, in training
mode with BatchNorm and hooks, with tied weights, partly frozen, and on the meta device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

import rfscope


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    sd = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if v.device.type == "meta":
            sd[k] = ("meta", tuple(v.shape), str(v.dtype))
        else:
            raw = v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            sd[k] = hashlib.sha256(raw).hexdigest()
    return {
        "state": sd,
        "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters(remove_duplicate=False)},
        "grads": {k: p.grad is None for k, p in model.named_parameters(remove_duplicate=False)},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, "_backward_pre_hooks", {})))
                  for k, m in model.named_modules()},
        "tensor_hooks": {k: len(p._backward_hooks or {}) for k, p in model.named_parameters(remove_duplicate=False)},
        "devices": {k: str(v.device) for k, v in model.state_dict(keep_vars=True).items()},
        # (``_parameters``, not ``.weight``: reading a parametrized weight in training mode changes it)
        "tied": model[0]._parameters.get("weight") is model[-1]._parameters.get("weight")
        if isinstance(model, nn.Sequential) and len(model) > 1 and "weight" in model[0]._parameters else None,
    }


class Tied(nn.Module):
    """A conv whose weight is shared with a second conv (tied weights)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.b.weight = self.a.weight
        self.stem = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(self.stem(x))))


def _training_bn_with_hooks() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    m.train()
    calls: list[int] = []
    m[0].register_forward_hook(lambda mod, i, o: calls.append(1))
    m[1].register_forward_pre_hook(lambda mod, i: calls.append(2))
    m[3].weight.register_hook(lambda g: g)
    m.hook_calls = calls  # type: ignore[assignment]
    return m


def _frozen() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    m[0].weight.requires_grad_(False)
    m[2].eval()
    return m


def _meta() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "tied": Tied,
    "training_bn_hooks": _training_bn_with_hooks,
    "frozen": _frozen,
    "meta": _meta,
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["auto", "export", "make_fx"])
def test_analyze_leaves_model_untouched(name, mode):
    torch.manual_seed(0)
    model = MODELS[name]()
    before = _fingerprint(model)
    if name == "meta" and mode == "make_fx":
        with pytest.raises(Exception, match="meta"):
            rfscope.analyze(model, (1, 3, 16, 16), trace=mode)
    else:
        rep = rfscope.analyze(model, (1, 3, 16, 16), trace=mode)
        assert rep.rf("output").status == "exact"
    assert _fingerprint(model) == before
    if hasattr(model, "hook_calls"):
        assert model.hook_calls == []  # the user's hooks never ran


@pytest.mark.parametrize("name", ["tied", "training_bn_hooks", "frozen"])
def test_check_init_and_probe_leave_model_untouched(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    before = _fingerprint(model)
    if hasattr(rfscope, "check_init"):
        rfscope.check_init(model, (1, 3, 16, 16))
        assert _fingerprint(model) == before
    probe = pytest.importorskip("rfscope.probe")
    if hasattr(probe, "erf"):
        probe.erf(model, "output", (1, 3, 16, 16), samples=2, batch_size=2, progress=False, device="cpu")
        assert _fingerprint(model) == before
    if hasattr(probe, "validate"):
        probe.validate(model, input_shape=(1, 3, 16, 16), device="cpu")
        assert _fingerprint(model) == before


def test_weights_leave_model_untouched(tmp_path):
    model = Tied()
    ck = tmp_path / "w.pt"
    torch.save(Tied().state_dict(), ck)
    before = _fingerprint(model)
    rep = rfscope.analyze(model, (1, 3, 16, 16), weights=ck, trace="make_fx")
    assert rep.rf("output").size == (7, 7)  # 3 + 2 + 2, hand-derived
    assert _fingerprint(model) == before


def test_user_hooks_never_run():
    """Hooks are the user's: analysing or checking a copy must not fire their side effects."""
    calls: list[str] = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    net[0].register_forward_hook(lambda m, i, o: calls.append("fwd"))
    net[2].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    rfscope.analyze(net, input_shape=(1, 3, 16, 16))
    rfscope.check_init(net, input_shape=(1, 3, 16, 16))
    assert calls == []
    net(torch.zeros(1, 3, 16, 16))  # the hooks are still registered on the user's model
    assert calls == ["fwd", "pre"]


class _Stateful(nn.Module):
    """Python state that a forward touches: a dict cache filled on first use, blocks kept in a plain
    list (not a ModuleList), a plain tensor attribute, and a leaf layer that counts its calls."""

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[int, ...]] = []
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            self.seen.append(tuple(x.shape))
            return self.conv(x)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.blocks = [self.a, self.b]  # plain list: references into the tree
        self.cache: dict[str, Any] = {}
        self.scale = torch.full((1, 4, 1, 1), 2.0)
        self.leaf = _Stateful.Counting()

    def forward(self, x):
        x = self.stem(x)
        if "gain" not in self.cache:
            self.cache["gain"] = torch.ones(1)
        for blk in self.blocks:
            x = torch.relu(blk(x)) * self.scale
        return self.leaf(x * self.cache["gain"])


def test_python_state_of_the_model_is_untouched():
    model = _Stateful()
    before = _fingerprint_nonseq(model)
    scale = model.scale.clone()
    for mode in ("auto", "make_fx"):  # (torch.export of a meta copy refuses the cpu tensor attribute)
        rep = rfscope.analyze(model, (1, 3, 16, 16), trace=mode, leaf_modules=["leaf"])
        assert rep.rf("b").size == (7, 7)  # 3 + 2 + 2, hand-derived
    assert model.cache == {} and model.leaf.seen == []  # the forward's side effects stayed on the copies
    assert model.blocks[0] is model.a and model.blocks[1] is model.b
    assert torch.equal(model.scale, scale)
    assert _fingerprint_nonseq(model) == before


def _fingerprint_nonseq(model: nn.Module) -> dict[str, Any]:
    fp = _fingerprint(model)
    fp.pop("tied")
    return fp


# ---------------------------------------------------------------------------
# Models whose forward mutates their own state.  Every entry point must leave that state as it was:
# buffers, parameters, Python attributes, parametrizations and the global RNG.
class _BufferCounter(nn.Module):
    """``self.steps += 1`` on a registered buffer (a step counter)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.steps += 1
        return self.conv(x)


class _Ema(nn.Module):
    """``ema.mul_().add_()`` with a constant and with a value computed from the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("ema", torch.ones(4))
        self.register_buffer("ema_x", torch.ones(()))

    def forward(self, x):
        self.ema.mul_(0.9).add_(0.1)
        y = self.conv(x)
        self.ema_x.mul_(0.9).add_(y.detach().mean() * 0.1)
        return y


class _FillAssignCopy(nn.Module):
    """``fill_``, item assignment and ``copy_`` on buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("flag", torch.zeros(()))
        self.register_buffer("hist", torch.zeros(3))
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x):
        self.flag.fill_(1.0)
        self.hist[0] = 7.0
        self.last.copy_(torch.full_like(self.last, 3.0))
        return self.conv(x)


class _ParamInNoGrad(nn.Module):
    """Weight clipping in the forward: parameters changed in place under ``torch.no_grad()``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        with torch.no_grad():
            for p in self.conv.parameters():
                p.mul_(0.5)
            self.conv.weight.clamp_(-0.01, 0.01)
        return self.conv(x)


class _PythonAttrs(nn.Module):
    """Python attributes updated by the forward: a counter, a list and a dict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0
        self.log: list[str] = []
        self.meta_info: dict[str, int] = {}

    def forward(self, x):
        self.calls += 1
        self.log.append("fwd")
        self.meta_info["n"] = self.meta_info.get("n", 0) + 1
        return self.conv(x)


class _Noisy(nn.Module):
    """Draws from the global generator in the forward (noise of weight zero)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x + 0.0 * torch.randn_like(x))


def _spectral() -> nn.Module:
    """``spectral_norm`` parametrizations: in training mode every weight read advances ``_u``."""
    P = nn.utils.parametrizations
    return nn.Sequential(P.spectral_norm(nn.Conv2d(3, 4, 3)), nn.ReLU(), P.spectral_norm(nn.Conv2d(4, 4, 3)))


MUTATING: dict[str, Callable[[], nn.Module]] = {
    "buffer_iadd": _BufferCounter,
    "buffer_ema": _Ema,
    "buffer_fill_setitem_copy": _FillAssignCopy,
    "param_no_grad": _ParamInNoGrad,
    "python_attrs": _PythonAttrs,
    "global_rng": _Noisy,
    "spectral_norm": _spectral,
}


def _python_state(model: nn.Module) -> dict[str, Any]:
    skip = {"training"}
    return {k: {a: repr(v) for a, v in vars(m).items()
                if not a.startswith("_") and a not in skip and not isinstance(v, (torch.Tensor, nn.Module))}
            for k, m in model.named_modules()}


def _full_fingerprint(model: nn.Module) -> dict[str, Any]:
    fp = _fingerprint_nonseq(model)
    fp["python"] = _python_state(model)
    fp["rng"] = hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).hexdigest()
    return fp


def _entry(name: str) -> Callable[[nn.Module], Any]:
    shape = (1, 3, 16, 16)
    if name.startswith("analyze:"):
        mode = name.split(":", 1)[1]
        return lambda m: rfscope.analyze(m, shape, trace=mode)
    if name == "check_init":
        return lambda m: rfscope.check_init(m, shape)
    import rfscope.probe as probe

    if name == "probe.erf":
        return lambda m: probe.erf(m, "output", shape, samples=2, batch_size=2, progress=False, device="cpu")
    return lambda m: probe.validate(m, input_shape=shape, device="cpu", grow=False)


#: the one expected refusal: symbolic_trace refuses a forward that writes to a parameter in place
#: (trace="auto" analyses it with torch.export instead)
_REFUSALS = {("param_no_grad", "analyze:symbolic_trace")}

ENTRIES = ["analyze:symbolic_trace", "analyze:export", "analyze:make_fx", "analyze:auto", "check_init",
           "probe.erf", "probe.validate"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(MUTATING))
def test_mutating_forward_leaves_model_untouched(name, train, entry):
    torch.manual_seed(0)
    model = MUTATING[name]()
    model.train(train)
    before = _full_fingerprint(model)
    from rfscope.core.errors import TraceError
    from rfscope.probe import ProbeError

    try:
        _entry(entry)(model)
    except (TraceError, ProbeError) as e:  # a refusal is fine; a changed model is not
        if (name, entry) not in _REFUSALS:
            raise AssertionError(f"{entry} refused {name}: {e}") from e
    after = _full_fingerprint(model)
    assert after == before


def test_parameter_write_is_refused_on_the_symbolic_path():
    """symbolic_trace shares the parameters: the guard refuses the write instead of running it, and
    trace='auto' analyses the model with torch.export (on a meta copy)."""
    from rfscope.core.errors import TraceError

    model = _ParamInNoGrad()
    w = model.conv.weight.detach().clone()
    with pytest.raises(TraceError, match="writes to parameter 'conv.weight' in place"):
        rfscope.analyze(model, (1, 3, 16, 16), trace="symbolic_trace")
    rep = rfscope.analyze(model, (1, 3, 16, 16))
    assert rep.trace_path == "torch.export"
    assert rep.rf("output").size == (3, 3)  # one 3x3 conv, hand-derived
    assert torch.equal(model.conv.weight, w)
