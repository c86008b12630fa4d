"""rfscope.trace.copy.deepcopy_modules gives what copy.deepcopy gives, structure and identities."""

import copy

import torch
import torch.nn as nn

from rfscope.trace.copy import deepcopy_modules

tv = __import__("pytest").importorskip("torchvision")


def _memo(m):
    memo = {}
    for t in m.parameters():
        memo[id(t)] = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
    for b in m.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return memo


def _sig(a, seen):
    """Structure of an object graph: types, values, and which objects are the same object."""
    if isinstance(a, (nn.Module, torch.Tensor)) and id(a) in seen:
        return ("same-as", seen[id(a)])
    if isinstance(a, nn.Module):
        seen[id(a)] = len(seen)
        return (type(a), tuple((k, _sig(v, seen)) for k, v in a.__dict__.items()))
    if isinstance(a, torch.Tensor):
        seen[id(a)] = len(seen)
        return (type(a), a.device.type, tuple(a.shape), a.dtype, a.requires_grad)
    if isinstance(a, dict):
        return (type(a), tuple((k, _sig(v, seen)) for k, v in a.items()))
    if isinstance(a, (list, tuple)):
        return (type(a), tuple(_sig(v, seen) for v in a))
    if isinstance(a, set):
        return (type(a), tuple(sorted(map(repr, a))))
    return (type(a), repr(a))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def __deepcopy__(self, memo):
        new = _Custom.__new__(_Custom)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        new.copied_by_custom = True
        return new


class _Tangled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # tied
        self.c = self.a  # shared child
        self.side = [self.a, {"t": torch.zeros(2)}]  # module and tensor in plain attributes
        self.mha = nn.MultiheadAttention(4, 2)  # defines __setstate__
        self.custom = _Custom()
        self.register_buffer("buf", torch.ones(2))
        self.plain = torch.ones(3)
        self.a.register_forward_hook(lambda *x: None)


def _small_vit():
    return tv.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                       hidden_dim=8, mlp_dim=8)


def test_same_as_deepcopy():
    for m in (_Tangled(), tv.models.resnet18(), _small_vit(), tv.models.mobilenet_v3_small()):
        a = copy.deepcopy(m, _memo(m))
        b = deepcopy_modules(m, _memo(m))
        assert _sig(a, {}) == _sig(b, {})


def test_identities_and_custom_protocol():
    m = _Tangled()
    b = deepcopy_modules(m, _memo(m))
    assert b.c is b.a and b.side[0] is b.a and b.b.weight is b.a.weight
    assert b.a is not m.a and b.side is not m.side and b.side[1]["t"] is not m.side[1]["t"]
    assert b.custom.copied_by_custom and b.a.weight.device.type == "meta"
