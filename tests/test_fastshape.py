"""The shape shortcuts of rfscope.fastshape agree with PyTorch's own meta kernels."""

import pytest
import torch
import torch.nn as nn

from rfscope.fastshape import fast_module_output

CASES = [
    (nn.BatchNorm2d(8), (2, 8, 5, 7)),
    (nn.BatchNorm1d(8), (2, 8)),
    (nn.BatchNorm1d(8), (2, 8, 9)),
    (nn.BatchNorm3d(4, affine=False), (1, 4, 3, 5, 7)),
    (nn.LayerNorm(16), (2, 9, 16)),
    (nn.LayerNorm((4, 16), elementwise_affine=False), (2, 4, 16)),
    (nn.LayerNorm(16, bias=False), (16,)),
    (nn.Linear(16, 5), (2, 9, 16)),
    (nn.Linear(16, 5, bias=False), (16,)),
    (nn.Linear(16, 5), (3, 16)),
    (nn.ReLU(), (2, 3, 4, 4)),
    (nn.ReLU(inplace=True), (2, 3, 4, 4)),
    (nn.ReLU6(inplace=True), (2, 3, 4)),
    (nn.SiLU(), (2, 3, 4, 4)),
    (nn.Hardswish(inplace=True), (2, 3, 4, 4)),
    (nn.Hardsigmoid(), (2, 3, 4, 4)),
    (nn.Sigmoid(), (2, 3)),
    (nn.Tanh(), (2, 3)),
    (nn.GELU(approximate="tanh"), (2, 3, 4)),
]


def _meta(m):
    return m.to("meta").eval()


@pytest.mark.parametrize("module,shape", CASES, ids=lambda c: type(c).__name__ if isinstance(c, nn.Module) else None)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_meta_kernel(module, shape, dtype):
    m = _meta(module).to(dtype)
    x = torch.empty(shape, device="meta", dtype=dtype)
    with torch.no_grad():
        fast = fast_module_output(m, (x,), {})
        ref = m(x)
    assert fast is not None
    assert (fast.shape, fast.stride(), fast.dtype, fast.device) == (ref.shape, ref.stride(), ref.dtype, ref.device)
    assert (fast is x) == (ref is x)  # in-place ops return their input


@pytest.mark.parametrize(
    "module,x",
    [
        (nn.BatchNorm2d(8), torch.empty(2, 8, 5, 5, device="meta").to(memory_format=torch.channels_last)),
        (nn.BatchNorm2d(8), torch.empty(2, 7, 5, 5, device="meta")),  # wrong channels: real call raises
        (nn.BatchNorm2d(8), torch.empty(2, 8, 5, device="meta")),  # wrong rank
        (nn.BatchNorm2d(8, track_running_stats=False), torch.empty(1, 8, 1, 1, device="meta")),
        (nn.LayerNorm(16), torch.empty(2, 15, device="meta")),
        (nn.Linear(16, 5), torch.empty(2, 15, device="meta")),
        (nn.Linear(16, 5), torch.empty(2, 16, device="meta", dtype=torch.float16)),  # dtype mismatch
        (nn.ReLU(), torch.empty(4, 6, device="meta").t()),  # non-contiguous
        (nn.ReLU(), torch.empty(4, 6, device="meta", dtype=torch.int64)),
    ],
)
def test_declines_unusual_calls(module, x):
    assert fast_module_output(_meta(module), (x,), {}) is None


def test_subclass_and_hooks_decline():
    class MyBN(nn.BatchNorm2d):
        pass

    x = torch.empty(2, 8, 4, 4, device="meta")
    assert fast_module_output(_meta(MyBN(8)), (x,), {}) is None
    m = _meta(nn.ReLU())
    m.register_forward_hook(lambda *a: None)
    assert fast_module_output(m, (x,), {}) is None


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # returns a transposed view
        self.norm = nn.LayerNorm(8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.attn(x, x, x, need_weights=False)[0]
        return self.act(self.norm(x + y).transpose(1, 2)).transpose(1, 2)


class _Repeated(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[_Block() for _ in range(3)])
        self.flat = nn.Flatten()

    def forward(self, x):
        x = self.blocks(x)
        return self.flat(torch.cat([x, x], dim=1))


def _vals(gm):
    out = []
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, tuple):
            v = v[0]
        out.append((n.name, tuple(v.shape), v.stride(), v.dtype) if isinstance(v, torch.Tensor) else None)
    return out


def test_call_cache_replays_what_the_call_returns(monkeypatch):
    """Repeated identical calls come from the cache; their layout is what running them gives."""
    from rfscope.fastshape import ModuleCallCache
    from rfscope.registry import default_registry
    from rfscope.trace import meta_copy, propagate_shapes, trace

    reg = default_registry()
    reg.ensure_loaded()
    x = (torch.empty(2, 5, 8),)
    gm = trace(meta_copy(_Repeated()), reg)
    hits = []
    real = ModuleCallCache._call

    def spy(self, key, args, kwargs, run):
        calls = []
        out = real(self, key, args, kwargs, lambda: calls.append(1) or run())
        hits.append(not calls)
        return out

    monkeypatch.setattr(ModuleCallCache, "_call", spy)
    propagate_shapes(gm, x)
    cached = _vals(gm)
    assert sum(hits) >= 4  # block 3 replays block 2 (block 1 reads the input, not a view)
    monkeypatch.setattr(ModuleCallCache, "_call", lambda self, key, args, kwargs, run: run())
    propagate_shapes(gm, x)
    assert cached == _vals(gm)
