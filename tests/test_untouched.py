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
        "tied": model[0].weight is model[-1].weight if isinstance(model, nn.Sequential) and len(model) > 1
        and hasattr(model[0], "weight") and hasattr(model[-1], "weight") else None,
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
