"""Property test: random token-layout programs, rfscope's per-element RF against the gradient oracle.

Each example is a small ``nn.Module`` built from a list of steps drawn by Hypothesis, after a
patch embed (1 channel, kernel = stride = 2: every token is a 2x2 pixel patch of an 8..16 pixel
image): window partition and its reverse, roll, flip, zero pad then crop, a class token ``cat``
and ``x[:, 1:]``, token mixing (mean broadcast back, attention written by hand, SDPA), a Conv1d /
AvgPool1d over the tokens of one grid row (or column), attention whose keys are every 2nd or 3rd
token per axis (a union with holes), an AvgPool1d over the flattened tokens (L-shaped unions
across row ends), ``x + f(x)``, pixel unshuffle written with
view/permute/reshape, ``repeat_interleave`` / ``repeat`` then a slice back, ``index_select`` with a
constant buffer index.  Every program ends in ``(N, C, H', W')`` or ``(N, L, C)``.

Property, for a handful of elements of the output (corners, centre, first/middle/last tokens, the
class token): a table or exact result equals the oracle's JOINT 2-D non-zero mask (the union of the
boxes clipped to the image; a periodic result: the product set of ``r.pixels`` per axis, against
the oracle's mask summed over channels); ``global`` means the oracle sees every pixel; ``unknown``
needs a non-empty reason.  Cases it found are kept, shrunk, as tests at the bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from masks import bbox, claimed, periodic_unit, seen
from oracle import Oracle

import rfscope

C = 4  # channels of every token
Spec = tuple[Any, ...]


# -- the steps -------------------------------------------------------------------------------------
class Step(nn.Module):
    """One step of a program; ``spec`` is the plain tuple Hypothesis drew (printed on failure)."""

    def __init__(self, spec: Spec, h: int, w: int) -> None:
        super().__init__()
        self.spec, self.h, self.w = spec, h, w
        kind = spec[0]
        if kind == "tokconv" and spec[1] == "conv":
            self.conv = nn.Conv1d(C, C, spec[2], padding=spec[2] // 2)
        elif kind == "unshuffle":
            self.lin = nn.Linear(4 * C, C)
        elif kind == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        elif kind == "mix" and spec[1] in ("attn", "sdpa"):
            self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        elif kind == "subattn":
            keys = [r * w + c for r in range(0, h, spec[1]) for c in range(0, w, spec[1])]
            self.register_buffer("index", torch.tensor(keys, dtype=torch.long))
            self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        elif kind in ("isel", "tisel"):
            self.register_buffer("index", torch.tensor(spec[-1], dtype=torch.long))
        elif kind == "res":
            self.inner = Step(spec[1], h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per step kind
        s, h, w = self.spec, self.h, self.w
        kind = s[0]
        if kind == "roll":
            return torch.roll(x, (s[1], s[1]), (1, 2))
        if kind == "flip":
            return torch.flip(x, s[1])
        if kind == "padcrop":
            p, a, b = s[1:]
            return F.pad(x, (0, 0, p, p, p, p))[:, a:a + h, b:b + w]
        if kind == "tokconv":  # over the tokens of one grid row (axis 2) or column (axis 1)
            g = x if s[3] == 2 else x.transpose(1, 2)
            hh, ww = g.shape[1], g.shape[2]
            t = g.reshape(-1, ww, C).transpose(1, 2)
            t = self.conv(t) if s[1] == "conv" else F.avg_pool1d(t, s[2], 1, s[2] // 2)
            g = t.transpose(1, 2).reshape(-1, hh, ww, C)
            return g if s[3] == 2 else g.transpose(1, 2)
        if kind == "subattn":  # attention whose keys are every s-th token per axis: holes between them
            b = x.shape[0]
            t = x.reshape(b, h * w, C)
            # picked with a constant index (x[:, ::s, ::s] stays periodic, where a mean or attention
            # over all of it is said 'global': test_mean_over_cropped_grid_is_not_global)
            kv = t.index_select(1, self.index)
            # plus x: the oracle's constant weights make all keys equal, which hides the query's own
            # token from the gradient when it is not among the keys (the model does depend on it)
            return x + F.scaled_dot_product_attention(self.q(t), self.k(kv), self.v(kv)).reshape(b, h, w, C)
        if kind == "flatpool":  # a 1-D pool over the flattened tokens: runs across row ends (L-shapes)
            return F.avg_pool1d(x.transpose(1, 2), s[1], 1, s[1] // 2).transpose(1, 2)
        if kind == "unshuffle":  # pixel_unshuffle by 2 written out, then back to C channels
            b = x.shape[0]
            y = x.view(b, h // 2, 2, w // 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * C)
            return self.lin(y)
        if kind == "rep":
            mode, dim, which = s[1:]
            n = x.shape[dim]
            if mode == "interleave":
                y = x.repeat_interleave(2, dim=dim)
                sl = slice(which, None, 2)
            else:
                reps = [1, 1, 1, 1]
                reps[dim] = 2
                y = x.repeat(*reps)
                sl = slice(which * n, (which + 1) * n)
            return y[:, sl] if dim == 1 else y[:, :, sl]
        if kind == "isel":
            return x.index_select(s[1], self.index)
        if kind == "win":
            ws = s[1]
            b = x.shape[0]
            y = x.view(b, h // ws, ws, w // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
            return y.reshape(-1, ws * ws, C)
        if kind == "unwin":
            ws = s[1]
            y = x.view(-1, h // ws, w // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
            return y.reshape(-1, h, w, C)
        if kind == "tokens":
            return x.reshape(x.shape[0], h * w, C)
        if kind == "grid":
            return x.reshape(x.shape[0], h, w, C)
        if kind == "cls":
            return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if kind == "dropcls":
            return x[:, 1:]
        if kind == "tisel":
            return x.index_select(1, self.index)
        if kind == "mix":
            if s[1] == "mean":
                return x.mean(1, keepdim=True).expand_as(x)
            q, k, v = self.q(x), self.k(x), self.v(x)
            if s[1] == "sdpa":
                return F.scaled_dot_product_attention(q, k, v)
            return (q @ k.transpose(-2, -1) * C ** -0.5).softmax(-1) @ v
        if kind == "res":
            return x + self.inner(x)
        raise AssertionError(s)


class Program(nn.Module):
    """Patch embed (1 -> C channels, 2x2 patches) to a (B, h, w, C) grid, the steps, then the end layout."""

    def __init__(self, hw: tuple[int, int], steps: Sequence[Spec], end: str) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, C, 2, 2)
        h, w = hw[0] // 2, hw[1] // 2
        mods = []
        for spec in steps:
            mods.append(Step(spec, h, w))
            if spec[0] == "unshuffle":
                h, w = h // 2, w // 2
        self.steps = nn.ModuleList(mods)
        self.end = end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        for m in self.steps:
            x = m(x)
        if self.end == "nchw":
            return x.permute(0, 3, 1, 2)
        return x


# -- the strategy ----------------------------------------------------------------------------------
GRID_PRESERVING = ("roll", "flip", "padcrop", "tokconv", "rep", "isel", "subattn")


@st.composite
def grid_step(draw: st.DrawFn, h: int, w: int, kinds: Sequence[str]) -> Spec:
    kind = draw(st.sampled_from(list(kinds)))
    if kind == "roll":
        return ("roll", draw(st.sampled_from([1, 2, 3, -1])))
    if kind == "flip":
        return ("flip", draw(st.sampled_from([(1,), (2,), (1, 2)])))
    if kind == "padcrop":
        p = draw(st.integers(1, 2))
        return ("padcrop", p, draw(st.integers(0, 2 * p)), draw(st.integers(0, 2 * p)))
    if kind == "tokconv":
        return ("tokconv", draw(st.sampled_from(["conv", "avg"])), draw(st.sampled_from([1, 3])),
                draw(st.sampled_from([1, 2])))
    if kind == "rep":
        return ("rep", draw(st.sampled_from(["interleave", "repeat"])), draw(st.sampled_from([1, 2])),
                draw(st.integers(0, 1)))
    if kind == "subattn":
        return ("subattn", draw(st.sampled_from([2, 3])))
    if kind == "isel":
        dim = draw(st.sampled_from([1, 2]))
        n = h if dim == 1 else w
        return ("isel", dim, tuple(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))))
    raise AssertionError(kind)


@st.composite
def programs(draw: st.DrawFn) -> tuple[tuple[int, int], tuple[Spec, ...], str]:
    hw = (draw(st.sampled_from([8, 12, 16])), draw(st.sampled_from([8, 12, 16])))
    h, w = hw[0] // 2, hw[1] // 2
    layout, cls, ws = "grid", False, 0
    steps: list[Spec] = []
    for _ in range(draw(st.integers(1, 6))):
        if layout == "grid":
            kinds = [*GRID_PRESERVING, "res", "tokens"]
            wins = [k for k in (2, 3, 4) if h % k == 0 and w % k == 0 and (h, w) != (k, k)]
            if wins:
                kinds.append("win")
            if h % 2 == 0 and w % 2 == 0 and h > 2 and w > 2:
                kinds.append("unshuffle")
            kind = draw(st.sampled_from(kinds))
            if kind == "res":
                steps.append(("res", draw(grid_step(h, w, GRID_PRESERVING))))
            elif kind in GRID_PRESERVING:
                steps.append(draw(grid_step(h, w, [kind])))
            elif kind == "win":
                ws = draw(st.sampled_from(wins))
                steps.append(("win", ws))
                layout = "win"
            elif kind == "unshuffle":
                steps.append(("unshuffle",))
                h, w = h // 2, w // 2
            else:
                steps.append(("tokens",))
                layout = "tokens"
        elif layout == "tokens":
            kinds = ["dropcls" if cls else "cls", "mix", "tisel", "res", "flatpool"] + ([] if cls else ["grid"])
            kind = draw(st.sampled_from(kinds))
            n = h * w + cls
            mix = st.sampled_from(["mean", "attn", "sdpa"])
            if kind == "mix":
                steps.append(("mix", draw(mix)))
            elif kind == "tisel":
                steps.append(("tisel", tuple(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)))))
            elif kind == "res":
                steps.append(("res", ("mix", draw(mix))))
            elif kind == "flatpool":
                steps.append(("flatpool", draw(st.sampled_from([3, 5]))))
            elif kind == "grid":
                steps.append(("grid",))
                layout = "grid"
            else:
                steps.append((kind,))
                cls = kind == "cls"
        else:  # windows (B * nW, ws * ws, C)
            kind = draw(st.sampled_from(["mix", "res", "unwin"]))
            mix = st.sampled_from(["mean", "attn", "sdpa"])
            if kind == "unwin":
                steps.append(("unwin", ws))
                layout = "grid"
            else:
                m = ("mix", draw(mix))
                steps.append(m if kind == "mix" else ("res", m))
    if layout == "win":
        steps.append(("unwin", ws))
        layout = "grid"
    end = draw(st.sampled_from(["nchw", "nlc"])) if layout == "grid" else "nlc"
    if layout == "grid" and end == "nlc":
        steps.append(("tokens",))
    return hw, tuple(steps), end


# -- the comparison --------------------------------------------------------------------------------
def elements(y: torch.Tensor, end: str) -> list[tuple[int, ...]]:
    """Corners and centre (NCHW), or first / middle / last tokens (NLC; the first is the class
    token when there is one), on the first and last channel."""
    if end == "nchw":
        hh, ww = y.shape[2], y.shape[3]
        pos = [(0, 0), (0, ww - 1), (hh - 1, 0), (hh - 1, ww - 1), (hh // 2, ww // 2)]
        return [(0, (0, C - 1)[i % 2], a, b) for i, (a, b) in enumerate(pos)]
    n = y.shape[1]
    return [(0, t, c) for t in sorted({0, 1 % n, n // 2, n - 1}) for c in (0, C - 1)]


def check(hw: tuple[int, int], steps: Sequence[Spec], end: str) -> str:
    """Run the property on one program; returns the outcome (table / exact / global / unknown)."""
    torch.manual_seed(0)
    model = Program(hw, steps, end).eval()
    shape = (1, 1, *hw)
    rep = rfscope.analyze(model, input_shape=shape)
    r = rep.rf("output")
    o = Oracle(model, shape)
    y = o.out
    outcome = "table" if r.table is not None and r.status == "exact" else r.status
    if r.status == "unknown":
        assert r.reason, r
        return outcome
    for idx in elements(y, end):
        if r.status == "global":  # every element sees the whole input (a table's boxes are the local part)
            want = seen(o, y, idx, None)
            assert bool(want.all()), (idx, "global but the oracle sees", bbox(want), want.sum())
            continue
        assert r.status == "exact", r
        unit, chan = (None, None) if r.table is not None else periodic_unit(rep.records["output"].state.dims, r, idx)
        want = seen(o, y, idx, chan)
        got = claimed(r, idx, hw, unit)
        detail = r.table.boxes(tuple(idx)) if r.table is not None else r.pixels(tuple(unit or ()))
        assert torch.equal(got, want), (idx, "rfscope", bbox(got), detail, "oracle", bbox(want),
                                        want.nonzero().tolist())
    return outcome


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(programs())
def test_random_token_programs_match_the_oracle(prog: tuple[tuple[int, int], tuple[Spec, ...], str]) -> None:
    hw, steps, end = prog
    outcome = check(hw, steps, end)
    event(f"outcome: {outcome}")


# -- cases the property found, shrunk: kept as regular tests -------------------------------------------
# The first two were wrong 'global's (a mean over a cropped grid sees only what is left: a periodic
# 'global' is now checked to cover the input, rfscope/passes/interpret.py), the next two wrong
# windows of padded positions: F.pad's periodic rule gives a padded position the window of a unit
# past the border, which only a sliding window may read that way; any other reader now gets the
# per-position form, where a padded position sees nothing (rfscope/plugins/pad.py).
def test_mean_over_cropped_grid_is_not_global() -> None:
    """A mean over the tokens of a grid whose last patch row and column were cropped away sees
    pixels (0..5, 0..5) only: not 'global' (the periodic form's mixing rules check that the mixed
    positions cover the input, else the per-position form states the union)."""
    assert check((8, 8), [("padcrop", 1, 0, 0), ("tokens",), ("mix", "mean")], "nlc") in ("table", "exact")


def test_mean_over_cropped_tokens_then_class_token() -> None:
    assert check((8, 8), [("padcrop", 1, 0, 0), ("tokens",), ("mix", "mean"), ("cls",)], "nlc") in ("table", "exact")


def test_subsampled_map_mean_is_not_global() -> None:
    """``x[:, :, ::2, ::2]`` stays periodic; a mean over it sees every second patch, not the input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2, 2), _Sub(), nn.AdaptiveAvgPool2d(1)).eval()
    rep = rfscope.analyze(model, input_shape=(1, 1, 8, 8))
    r = rep.rf("output")
    assert r.status == "exact", r
    o = Oracle(model, (1, 1, 8, 8))
    want = seen(o, o.out, (0, 0, 0, 0), None)
    assert int(want.sum()) == 16  # four 2x2 patches
    assert torch.equal(claimed(r, (0, 0, 0, 0), (8, 8)), want)


class _Sub(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


def test_class_token_after_global_mean() -> None:
    check((8, 8), [("roll", 1), ("tokens",), ("mix", "mean"), ("cls",)], "nlc")


def test_crop_then_pad_back_sees_nothing() -> None:
    check((8, 8), [("padcrop", 1, 2, 1), ("padcrop", 1, 0, 1)], "nchw")


def test_residual_diagonal_shift_is_not_a_box() -> None:
    check((8, 8), [("res", ("padcrop", 1, 0, 2))], "nchw")


def test_crop_flip_then_pad_sees_nothing() -> None:
    check((8, 8), [("padcrop", 1, 0, 0), ("flip", (1,)), ("padcrop", 1, 0, 0)], "nchw")


@pytest.mark.parametrize("prog", [
    ((8, 8), (("subattn", 2),), "nchw"),                                         # keys every 2nd token: holes
    ((12, 12), (("subattn", 2), ("subattn", 2)), "nchw"),                       # holes, mixed again
    ((16, 8), (("subattn", 2), ("tokconv", "conv", 3, 2)), "nchw"),             # a conv over a union with holes
    ((12, 12), (("tokens",), ("flatpool", 5)), "nlc"),                          # L-shapes across row ends
    ((12, 8), (("tokens",), ("flatpool", 3), ("flatpool", 5), ("grid",)), "nchw"),
    ((12, 12), (("subattn", 2), ("tokens",), ("flatpool", 3)), "nlc"),         # both
], ids=["holes", "two-strides", "conv-over-holes", "l-shape", "l-shape-twice", "holes-then-l"])
def test_holes_and_l_shapes_are_stated_exactly(prog: tuple[tuple[int, int], tuple[Spec, ...], str]) -> None:
    """Unions that are not a box: runs at a step (keys pooled with gaps) and L-shapes (a 1-D op
    across row ends) are stated exactly (docs/design.md §2b, "Holes"), never ``unknown``."""
    assert check(*prog) in ("table", "exact")
