"""The shape shortcuts of rfscope.trace.shortcuts agree with PyTorch's own meta kernels."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from rfscope.trace.shortcuts import fast_module_output

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
    (nn.Dropout(0.1), (2, 3, 4)),
    (nn.Dropout(0.5, inplace=True), (2, 3)),
    (nn.AdaptiveAvgPool2d(1), (2, 8, 7, 5)),
    (nn.AdaptiveAvgPool2d((3, None)), (8, 7, 5)),
    (nn.AdaptiveAvgPool1d(4), (2, 8, 9)),
    (nn.AdaptiveAvgPool3d((1, 2, 3)), (1, 2, 3, 5, 7)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 7)),
    (nn.Conv1d(4, 8, 5, dilation=2, groups=4), (4, 20)),
    (nn.Conv3d(2, 3, (1, 3, 3), padding="same", bias=False), (1, 2, 3, 5, 5)),
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
    from rfscope.core.registry import default_registry
    from rfscope.trace.copy import meta_copy
    from rfscope.trace.shapes import propagate_shapes
    from rfscope.trace.shortcuts import ModuleCallCache
    from rfscope.trace.symbolic import trace

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


@settings(max_examples=300, deadline=None)
@given(
    nd=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]), cin=st.integers(1, 3), cout=st.integers(1, 3),
    k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same", "valid"]), padding_mode=st.sampled_from(["zeros", "reflect"]),
    bias=st.booleans(), batch=st.sampled_from([None, 1, 2]), extra_channel=st.booleans(),
    sizes=st.lists(st.sampled_from([1, 2, 3, 5, 8]), min_size=3, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), weight_dtype_differs=st.booleans(),
    channels_last=st.sampled_from([None, "input", "weight"]),
)
def test_conv_shortcut_matches_meta_kernel(nd, groups, cin, cout, k, stride, dilation, padding, padding_mode, bias,
                                           batch, extra_channel, sizes, dtype, weight_dtype_differs, channels_last):
    """Conv1d/2d/3d: whenever the shortcut answers, PyTorch's meta kernel gives the same shape, strides and
    dtype (and accepts the call); declined calls are left to PyTorch."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    if padding == "same" and stride != 1:
        padding = 1
    m = cls(cin * groups, cout * groups, k, stride, padding, dilation, groups, bias=bias, padding_mode=padding_mode)
    m = _meta(m).to(torch.float32 if weight_dtype_differs and dtype != torch.float32 else dtype)
    shape = ((batch,) if batch else ()) + (cin * groups + extra_channel, *sizes[:nd])
    x = torch.empty(shape, device="meta", dtype=dtype)
    if channels_last == "input" and nd == 2 and batch:
        x = x.to(memory_format=torch.channels_last)
    if channels_last == "weight" and nd == 2:
        m = m.to(memory_format=torch.channels_last)
    fast = fast_module_output(m, (x,), {})
    try:
        with torch.no_grad():
            ref = m(x)
    except Exception:
        assert fast is None  # the shortcut never answers for a call PyTorch refuses
        return
    if fast is not None:
        assert (fast.shape, fast.stride(), fast.dtype) == (ref.shape, ref.stride(), ref.dtype)


def test_function_rule_is_trusted_only_after_it_matched_a_real_call():
    from rfscope.trace.shortcuts import ModuleCallCache, register_function_rule

    calls = []

    def double_rows(x):  # a "library function" whose output has twice the rows
        calls.append(1)
        return torch.cat([x, x])

    def right(x):
        return torch.empty((2 * x.shape[0], *x.shape[1:]), device="meta")

    def wrong(x):
        return torch.empty(tuple(x.shape), device="meta")

    x = torch.empty(3, 4, device="meta")
    register_function_rule(double_rows, right)
    cache = ModuleCallCache()
    outs = [cache.call_function(double_rows, (x,), {}, lambda: double_rows(x)) for _ in range(3)]
    assert len(calls) == 1 and all(o.shape == (6, 4) for o in outs)  # checked once, then trusted

    def halve(x):
        calls.append(2)
        return x[: x.shape[0] // 2]

    register_function_rule(halve, wrong)
    outs = [cache.call_function(halve, (x,), {}, lambda: halve(x)) for _ in range(3)]
    assert calls.count(2) == 3 and all(o.shape == (1, 4) for o in outs)  # wrong once: never used


def maybe_pool(x, s):
    """A "library function" fx keeps as one call (``torch.fx.wrap``): max-pool 3x3 with stride ``s``."""
    return torch.nn.functional.max_pool2d(x, 3, stride=s, padding=1)


torch.fx.wrap("maybe_pool")


class _PoolNet(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.head(maybe_pool(self.conv(x), self.s))


class _InlinePoolNet(_PoolNet):
    def forward(self, x):
        return self.head(torch.nn.functional.max_pool2d(self.conv(x), 3, stride=self.s, padding=1))


def test_function_rule_is_checked_per_call_signature():
    """A rule right for ``maybe_pool(x, 1)`` (output shaped like the input) and trusted there is
    checked again for ``maybe_pool(x, 2)``: the stride-2 model still gets its real shape and MACs."""
    import rfscope
    from rfscope.trace.shortcuts import register_function_rule

    def same_shape(x, s):  # right for s=1 only
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")

    register_function_rule(maybe_pool, same_shape)
    shape = (1, 3, 30, 30)
    for s in (1, 2, 1, 2):  # the s=1 verdict exists before the first s=2 call
        rep = rfscope.analyze(_PoolNet(s), input_shape=shape)
        node = next(r for r in rep.records.values() if r.target_obj is maybe_pool)
        real = tuple(maybe_pool(_PoolNet(s).conv(torch.zeros(shape)), s).shape)
        assert node.shape == real == ((1, 8, 28, 28) if s == 1 else (1, 8, 14, 14))
        inline = rfscope.analyze(_InlinePoolNet(s), input_shape=shape)
        assert rep.records["head"].macs == inline.records["head"].macs == 8 * 8 * real[2] * real[3]
        assert rep.records["head"].shape == inline.records["head"].shape


@pytest.mark.parametrize("h,w,window,shift,heads", [(8, 8, 4, 2, 2), (7, 9, 4, 2, 1), (5, 5, 7, 3, 4), (4, 4, 4, 0, 2)])
@pytest.mark.parametrize("v2", [False, True])
def test_swin_attention_rule_matches_the_real_function(h, w, window, shift, heads, v2):
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    from rfscope.plugins.torchvision_ops import _swin_attention_shape

    c = 8
    x = torch.empty(2, h, w, c, device="meta")
    args = (x, torch.empty(3 * c, c, device="meta"), torch.empty(c, c, device="meta"),
            torch.empty(1, heads, window * window, window * window, device="meta"), [window, window], heads)
    kw = {"shift_size": [shift, shift], "qkv_bias": torch.empty(3 * c, device="meta"), "training": False}
    if v2:
        kw["logit_scale"] = torch.empty(heads, 1, 1, device="meta")
    ref = swin.shifted_window_attention(*args, **kw)
    guess = _swin_attention_shape(*args, **kw)
    assert (guess.shape, guess.stride(), guess.dtype) == (ref.shape, ref.stride(), ref.dtype)


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=2, max_size=4), perm_seed=st.integers(0, 1000),
    norm_dims=st.integers(1, 2), weight=st.booleans(), bias=st.booleans(), narrow=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16]), module=st.booleans(),
)
def test_layer_norm_shortcut_matches_meta_kernel(shape, perm_seed, norm_dims, weight, bias, narrow, dtype, module):
    """LayerNorm / F.layer_norm on contiguous, permuted and sliced inputs (size-1 dims included): the
    shortcut's shape, strides and dtype are the kernel's, or it declines."""
    import random

    from rfscope.trace.shortcuts import _layer_norm_output

    perm = list(range(len(shape)))
    random.Random(perm_seed).shuffle(perm)
    x = torch.empty([shape[p] for p in perm], device="meta", dtype=dtype).permute([perm.index(i) for i in perm])
    if narrow and x.shape[-1] > 1:
        x = x[..., :1]
    ns = tuple(x.shape[-min(norm_dims, x.dim()):])
    if module:
        m = _meta(nn.LayerNorm(ns, elementwise_affine=weight, bias=bias)).to(dtype)
        fast = fast_module_output(m, (x,), {})
        ref = m(x)
    else:
        w = torch.empty(ns, device="meta", dtype=dtype) if weight else None
        b = torch.empty(ns, device="meta", dtype=dtype) if bias else None
        fast = _layer_norm_output(x, ns, w, b)
        ref = torch.nn.functional.layer_norm(x, ns, w, b)
    if fast is not None:
        assert (fast.shape, fast.stride(), fast.dtype) == (ref.shape, ref.stride(), ref.dtype)
    if not x.is_contiguous():
        assert fast is not None  # the permuted case is the one the shortcut is for


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.sampled_from([1, 2, 3]), min_size=2, max_size=4), perm_seed=st.integers(0, 1000),
       which=st.sampled_from(["bn", "relu", "relu_", "gelu", "linear", "conv"]))
def test_shortcuts_match_or_decline_on_odd_strides(shape, perm_seed, which):
    """Contiguous tensors whose size-1 dims carry other strides (from permutes): every module shortcut
    either gives the kernel's exact strides or declines."""
    import random

    perm = list(range(len(shape)))
    random.Random(perm_seed).shuffle(perm)
    x = torch.empty([shape[p] for p in perm], device="meta").permute([perm.index(i) for i in perm])
    c = x.shape[1] if x.dim() > 1 else x.shape[0]
    m = {"bn": lambda: nn.BatchNorm1d(c) if x.dim() in (2, 3) else nn.BatchNorm2d(c) if x.dim() == 4 else None,
         "relu": lambda: nn.ReLU(), "relu_": lambda: nn.ReLU(inplace=True), "gelu": lambda: nn.GELU(),
         "linear": lambda: nn.Linear(x.shape[-1], 4),
         "conv": lambda: nn.Conv2d(c, 2, 1) if x.dim() == 4 else None}[which]()
    if m is None:
        return
    m = _meta(m)
    fast = fast_module_output(m, (x,), {})
    with torch.no_grad():
        ref = m(x)
    if fast is not None:
        assert (fast.shape, fast.stride(), fast.dtype) == (ref.shape, ref.stride(), ref.dtype)


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=4), min_size=1, max_size=2),
       perm_seed=st.integers(0, 1000), scalar=st.sampled_from([None, 2, 0.5]),
       fn=st.sampled_from(["add", "sub", "mul", "truediv", "torch.add", "torch.mul"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), swap=st.booleans(), param=st.booleans())
def test_broadcast_shortcut_matches_or_declines(shapes, perm_seed, scalar, fn, dtype, swap, param):
    """``a + b``, ``a * b``... on meta tensors of any sizes (broadcast or not, size-1 dims, permuted
    strides, a Python scalar, a parameter), without grad as in the shape pass: the shortcut gives the
    kernel's shape, strides and dtype, or declines."""
    import operator
    import random

    from rfscope.trace.shortcuts import _broadcast_output

    rng = random.Random(perm_seed)
    args = []
    for s in shapes:
        perm = list(range(len(s)))
        if rng.random() < 0.3:
            rng.shuffle(perm)
        args.append(torch.empty([s[p] for p in perm], device="meta", dtype=dtype).permute(
            [perm.index(i) for i in perm]))
    if scalar is not None and len(args) == 1:
        args.append(scalar)
    if len(args) == 1:
        args.append(args[0])
    if param:
        args[0] = nn.Parameter(args[0])
    if swap:
        args.reverse()
    f = getattr(operator, fn) if "." not in fn else getattr(torch, fn.split(".")[1])
    with torch.no_grad():
        try:
            ref = f(*args)
        except RuntimeError:
            assert _broadcast_output(tuple(args), {}) is None  # shapes that do not broadcast: the kernel raises
            return
        fast = _broadcast_output(tuple(args), {})
    if fast is not None:
        assert (fast.shape, fast.stride(), fast.dtype, fast.requires_grad) == \
            (ref.shape, ref.stride(), ref.dtype, ref.requires_grad)
        assert type(fast) is type(ref)


@pytest.mark.parametrize("module", [nn.Linear(8, 5), nn.Linear(8, 5, bias=False), nn.Dropout(0.1),
                                    nn.Dropout(0.1, inplace=True)], ids=str)
@pytest.mark.parametrize("make", [lambda: torch.empty(2, 10, 8, device="meta")[:, 0],  # a class token
                                  lambda: torch.empty(8, 3, device="meta").t(),
                                  lambda: torch.empty(4, 16, device="meta")[:, ::2],
                                  lambda: torch.empty(1, 8, device="meta").expand(3, 8),
                                  lambda: torch.empty(2, 8, 3, device="meta").transpose(1, 2)])
def test_layout_free_shortcuts_match_meta_kernel(module, make):
    """Linear on a 2-D input of any layout, eval dropout on any input: the kernel's output exactly
    (a 3-D permuted input to Linear is left to the kernel)."""
    m, x = _meta(module), make()
    with torch.no_grad():
        fast = fast_module_output(m, (x,), {})
        ref = m(x)
    if isinstance(m, nn.Linear) and x.dim() != 2:
        assert fast is None
        return
    assert fast is not None
    assert (fast.shape, fast.stride(), fast.dtype, fast is x) == (ref.shape, ref.stride(), ref.dtype, ref is x)


def test_broadcast_shortcut_takes_the_common_cases():
    """The calls it is for: a squeeze-excitation scale (N, C, H, W) * (N, C, 1, 1), residual adds,
    a tensor and a Python number."""
    from rfscope.trace.shortcuts import _broadcast_output

    x, s = torch.empty(1, 8, 7, 7, device="meta"), torch.empty(1, 8, 1, 1, device="meta")
    pos = nn.Parameter(torch.empty(1, 8, 7, 7, device="meta"))  # a position embedding
    with torch.no_grad():
        for args in [(x, s), (s, x), (x, x), (x, 3.0), (2, x), (x, pos)]:
            fast = _broadcast_output(args, {})
            assert fast is not None and fast.shape == x.shape and fast.stride() == x.stride()
        assert _broadcast_output((x, x.to(torch.float16)), {}) is None  # dtype promotion: left to the kernel
    assert _broadcast_output((x, s), {}) is None  # with grad the output would need autograd: left to the kernel


@settings(max_examples=300, deadline=None)
@given(n=st.sampled_from([1, 2, 3]), batched=st.booleans(), data=st.data(), perm_seed=st.integers(0, 1000))
def test_adaptive_pool_shortcut_matches_or_declines(n, batched, data, perm_seed):
    """``nn.AdaptiveAvgPool{1,2,3}d`` with any output size (an int, a tuple, ``None`` entries) on any
    input (sizes 1-5, permuted strides): the shortcut gives the kernel's output or declines, and it
    takes every input with standard strides the kernel accepts."""
    import random

    shape = data.draw(st.lists(st.sampled_from([1, 2, 3, 5]), min_size=n + batched, max_size=n + batched + 1))
    out = data.draw(st.one_of(st.sampled_from([1, 2, 3]),
                              st.tuples(*[st.sampled_from([1, 2, 3, None])] * n)))
    perm = list(range(len(shape)))
    if perm_seed % 3 == 0:
        random.Random(perm_seed).shuffle(perm)
    x = torch.empty([shape[p] for p in perm], device="meta").permute([perm.index(i) for i in perm])
    m = _meta({1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[n](out))
    try:
        with torch.no_grad():
            ref = m(x)
    except Exception:  # noqa: BLE001 - any refusal of the kernel: the shortcut must decline too
        assert fast_module_output(m, (x,), {}) is None
        return
    fast = fast_module_output(m, (x,), {})
    if fast is not None:
        assert (fast.shape, fast.stride(), fast.dtype) == (ref.shape, ref.stride(), ref.dtype)
    elif x.dim() in (n + 1, n + 2):  # (a 1x1 output takes any rank: the kernel takes a mean first)
        assert x.stride() != torch.empty(x.shape).stride()  # the plain case is the one it is for


@settings(max_examples=150, deadline=None)
@given(e=st.sampled_from([4, 8]), heads=st.sampled_from([1, 2, 4]), batch_first=st.booleans(), bias=st.booleans(),
       n=st.sampled_from([1, 2, 3]), tgt=st.sampled_from([1, 2, 5]), src=st.sampled_from([1, 3, 5]),
       kv=st.sampled_from(["self", "same", "different"]), permuted=st.booleans(),
       need=st.sampled_from([None, True, False]), average=st.sampled_from([None, True, False]),
       mask=st.booleans())
def test_mha_shortcut_matches_the_module(e, heads, batch_first, bias, n, tgt, src, kv, permuted, need, average, mask):
    """``nn.MultiheadAttention`` on meta tensors (self- or cross-attention, either batch layout, with or
    without the weights, a permuted query): the shortcut gives the module's outputs exactly, or
    declines (masks are left to the module)."""
    m = _meta(nn.MultiheadAttention(e, heads, batch_first=batch_first, bias=bias))

    def make(a, b):
        return torch.empty((a, b, e) if batch_first else (b, a, e), device="meta")

    q = make(n, tgt)
    if permuted:
        q = q.transpose(0, 1).contiguous().transpose(0, 1)
    k = q if kv == "self" else make(n, src)
    v = k if kv != "different" else make(n, src)
    kw = {k_: v_ for k_, v_ in (("need_weights", need), ("average_attn_weights", average)) if v_ is not None}
    if mask:
        kw["attn_mask"] = torch.zeros(tgt, k.shape[1 if batch_first else 0], device="meta", dtype=torch.bool)
    with torch.no_grad():
        ref = m(q, k, v, **kw)
        fast = fast_module_output(m, (q, k, v), kw)
    if mask:
        assert fast is None
        return
    assert fast is not None

    def sig(t):
        return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.storage_offset())

    assert (sig(fast[0]), sig(fast[1])) == (sig(ref[0]), sig(ref[1]))
