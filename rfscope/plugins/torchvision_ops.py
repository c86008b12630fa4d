"""torchvision's fx-wrapped functions (only when torchvision is installed).

Swin Transformer (``torchvision.models.swin_transformer``) hides its spatial
index maps inside functions that fx keeps as leaves:

* ``shifted_window_attention``: pad H, W on the bottom/right to a multiple of the
  window, cyclic roll by ``-shift`` (shift set to 0 along a dim whose padded size
  is at most the window), attention within each window, reverse roll, crop.
  The attention mask is additive ``-100``, not ``-inf``: it weights the pieces a
  window gathers from both ends of an axis by about ``exp(-100)`` (~4e-44, a
  float32 subnormal), which is not zero, so they are part of the exact dependence
  (the gradient probe, :mod:`rfscope.probe`, shows how little they matter): a
  token reads every token of its window *of the rolled tensor*.  While the roll
  wraps no real token into a window with others (no shift, or only padding
  wraps), that is the lattice window: output position ``p`` reads exactly
  ``range(b, b + ws)`` with ``b = floor((p - s) / ws) * ws + s``, clipped to the
  tensor.  Where it does, position ``p`` reads the real tokens
  ``(r' + s) mod n`` of the window of ``r = (p - s) mod n`` in the rolled axis
  of padded size ``n``: a periodic RF of period ``n`` (:func:`_rolled_deps`),
  whose wrapped windows have holes.  Pad, roll and window partition act per
  axis, so the window is a product of per-axis sets and stays periodic.
* ``_patch_merging_pad``: pad H, W to even, then the 2x2 space-to-depth
  concatenation; output unit ``i`` reads input units ``2i, 2i+1`` per axis (leading
  dims, the frames T of video Swin included, are untouched).
* ``shifted_window_attention_3d`` (video Swin, ``torchvision.models.video``): the same
  over (T, H, W) windows of a (B, T, H, W, C) input.  The model clips window and shift
  to the input beforehand (``_get_window_and_shift_size``); the function itself keeps
  the shift (a window that fits the padded axis is then rolled onto itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import local, same_state
from rfscope.core.positions import elementwise_rule
from rfscope.core.registry import Registry
from rfscope.core.rf import Axis
from rfscope.core.shape_rules import register_function_rule
from rfscope.core.state import TensorRF
from rfscope.core.traits import POINTWISE


def _spatial_tags(ctx: OpContext, what: str, k: int = 2, leading_spatial: bool = False) -> TensorRF:
    """The input state, checked to be (..., S1..Sk, C) with plain spatial S1..Sk and a channel-like C
    (and, unless ``leading_spatial``, no position in the leading dims)."""
    st = ctx.first
    if st.reason is not None:
        return st
    if len(st.dims) < k + 1:
        raise Unsupported(f"{what}: expected a (..., {k} spatial dims, C) input, got {len(st.dims)} dims")
    sp, c = st.dims[-k - 1:-1], st.dims[-1]
    if not all(isinstance(t, int) for t in sp):
        raise Unsupported(f"{what}: the window dims are not plain spatial axes (tags {sp!r})")
    lead = st.dims[:-k - 1]
    if c is not None or any(t is not None and not (leading_spatial and isinstance(t, int)) for t in lead):
        raise Unsupported(f"{what}: channel/batch dims carry spatial positions (tags {st.dims!r})")
    _constant_weights(ctx, what)
    return st


def _constant_weights(ctx: OpContext, what: str) -> None:
    """Only the first argument (the tokens) may depend on the model input."""
    if any(isinstance(a, TensorRF) for a in (*ctx.args[1:], *ctx.kwargs.values())):
        raise Unsupported(f"{what}: a weight or bias argument depends on the model input")


def _window_geometry(ctx: OpContext, k: int = 2) -> tuple[list[int], list[int], tuple[int, ...]]:
    """Window sizes, effective shifts and padded spatial sizes, exactly as torchvision computes them
    (``k`` = 2: ``shifted_window_attention``, which zeroes the shift along a dim whose padded size is
    at most the window; 3: ``shifted_window_attention_3d``, which keeps it)."""
    what = "shifted_window_attention" + ("_3d" if k == 3 else "")
    window: Sequence[int] = ctx.param("window_size")
    shift: Sequence[int] = ctx.param("shift_size")
    shape = ctx.in_shape(0)
    if len(shape) != k + 2 or len(window) != k or len(shift) != k:
        raise Unsupported(f"{what}: expected a (B, {k} spatial dims, C) input and {k}-d window/shift")
    ws = [int(v) for v in window]
    sh = [int(v) for v in shift]
    if any(v <= 0 for v in ws):
        raise Unsupported(f"{what}: window {ws} is not positive")
    padded = tuple(-(-shape[1 + i] // ws[i]) * ws[i] for i in range(k))
    for i in range(k):
        if k == 2 and ws[i] >= padded[i]:
            sh[i] = 0
        if not 0 <= sh[i] < ws[i]:
            raise Unsupported(f"{what}: shift {sh[i]} outside [0, window {ws[i]})")
    return ws, sh, padded


def _window_deps(ws: int, s: int) -> Any:
    def deps(p: int) -> range:
        b = (p - s) // ws * ws + s
        return range(b, b + ws)

    return deps


def _rolled_deps(size: int, n: int, ws: int, s: int) -> Any:
    """Token ``i`` of an axis of ``size`` real tokens padded to ``n``, rolled by ``-s``: the real
    tokens of its window of the rolled tensor, ``j = (r' + s) mod n`` for ``r'`` in the window of
    ``r = (i - s) mod n``.  Periodic with period ``n`` (token ``i + n`` reads ``j + n``: the lattice
    beyond the tensor).  A padding token (``size <= i < n``, cropped) reads what token ``size - 1``
    reads whenever the roll wraps real tokens: both lie in the rolled tensor's last window."""
    seen = []
    for i in range(n):
        lo = (i - s) % n // ws * ws
        seen.append([j for j in ((r + s) % n for r in range(lo, lo + ws)) if j < size])

    def deps(p: int) -> list[int]:
        m, i = divmod(p, n)
        return [j + m * n for j in seen[i]]

    return deps


def _window_attention_rf(ctx: OpContext, k: int) -> TensorRF:
    """Each of the ``k`` window dims (1..k of a (B, *spatial, C) input) reads its window of the rolled
    tensor: the lattice window while the roll wraps no real token into a window with others, else the
    rolled window per position, periodic with the padded size as period.  The window is a product of
    per-axis sets (pad, roll and partition act per axis), so each axis says it alone."""
    what = "shifted_window_attention" + ("_3d" if k == 3 else "")
    st = _spatial_tags(ctx, what, k=k)
    if st.reason is not None:
        return st
    ws, sh, padded = _window_geometry(ctx, k)
    size = ctx.in_shape(0)[1:1 + k]

    def along(i: int) -> Any:
        # the rolled tensor's last window holds [padded - ws + s, padded) and [0, s): both real (a wrap)
        # unless the first piece is padding only, and the lattice window [s - ws, s) is then exact
        if sh[i] and size[i] > padded[i] - ws[i] + sh[i]:
            deps = _rolled_deps(size[i], padded[i], ws[i], sh[i])
            return lambda a: rf.resample(a, deps, padded[i], padded[i])
        return lambda a: rf.resample(a, _window_deps(ws[i], sh[i]), ws[i], ws[i])

    return local(ctx, {1 + i: along(i) for i in range(k)}, st)


def _swin_attention_rf(ctx: OpContext) -> TensorRF:
    return _window_attention_rf(ctx, 2)


def _swin_attention_3d_rf(ctx: OpContext) -> TensorRF:
    return _window_attention_rf(ctx, 3)


def _attention_macs(ctx: OpContext, k: int) -> int:
    """qkv projection, q.k^T and attn.v within each window, output projection (padded tokens)."""
    ws, _, padded = _window_geometry(ctx, k)
    shape = ctx.in_shape(0)
    b, c = shape[0], shape[-1]
    tokens = b * math.prod(padded)
    n = math.prod(ws)
    return tokens * (3 * c * c + 2 * n * c + c * c)


def _swin_attention_macs(ctx: OpContext) -> int:
    return _attention_macs(ctx, 2)


def _swin_attention_3d_macs(ctx: OpContext) -> int:
    return _attention_macs(ctx, 3)


def _patch_merging_rf(ctx: OpContext) -> TensorRF:
    st = _spatial_tags(ctx, "_patch_merging_pad", leading_spatial=True)
    if st.reason is not None:
        return st

    def s2d(a: Axis) -> Axis:
        return rf.conv(a, k=2, s=2)

    return local(ctx, {-3: s2d, -2: s2d}, st)


def _swin_attention_shape(
    input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor, relative_position_bias: torch.Tensor,
    window_size: Sequence[int], num_heads: int, shift_size: Sequence[int], *args: Any, **kwargs: Any,
) -> torch.Tensor | None:
    """Output of ``shifted_window_attention`` for a plain call: the input's (B, H, W, C) shape, contiguous
    (it pads, attends per window, un-shifts and crops back).  Checked against one real call first."""
    x = input
    if not isinstance(x, torch.Tensor) or x.device.type != "meta" or x.dim() not in (4, 5) or not x.is_contiguous():
        return None
    c = int(x.shape[3])
    if tuple(qkv_weight.shape) != (3 * c, c) or tuple(proj_weight.shape) != (c, c) or c % int(num_heads):
        return None
    k = x.dim() - 2
    if qkv_weight.dtype != x.dtype or proj_weight.dtype != x.dtype or len(window_size) != k or len(shift_size) != k:
        return None
    return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")


def register(reg: Registry) -> None:
    reg.when_imported("torchvision", _register_now)


def _register_now(reg: Registry) -> None:
    try:
        from torchvision.ops import stochastic_depth as sd_mod
        from torchvision.ops.stochastic_depth import StochasticDepth
    except Exception:  # noqa: BLE001 - torchvision is optional
        return
    fn = getattr(sd_mod, "stochastic_depth", None) if not callable(sd_mod) else sd_mod
    targets = [StochasticDepth] + ([fn] if fn is not None else [])
    # drops whole samples (train) or is the identity (eval): never moves positions
    reg.add("torchvision_stochastic_depth", targets, rf=same_state, traits={POINTWISE},
            table=elementwise_rule)  # random: not channelwise
    try:
        from torchvision.models import swin_transformer as swin
    except Exception:  # noqa: BLE001 - older torchvision without Swin
        return
    attn = getattr(swin, "shifted_window_attention", None)
    if attn is not None:
        reg.add("swin_window_attention", [attn], rf=_swin_attention_rf, macs=_swin_attention_macs)
        register_function_rule(attn, _swin_attention_shape)
    merge = getattr(swin, "_patch_merging_pad", None)
    if merge is not None:
        reg.add("swin_patch_merging", [merge], rf=_patch_merging_rf)
    try:
        from torchvision.models.video import swin_transformer as swin3d
    except Exception:  # noqa: BLE001 - older torchvision without video Swin
        return
    attn3d = getattr(swin3d, "shifted_window_attention_3d", None)
    if attn3d is not None:
        reg.add("swin3d_window_attention", [attn3d], rf=_swin_attention_3d_rf, macs=_swin_attention_3d_macs)
        register_function_rule(attn3d, _swin_attention_shape)
