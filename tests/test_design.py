"""rfscope.design: stack RF without a model, dilation schedules, assert_rf.

References: the Araujo et al. recurrence written out here, a brute-force bit-set
search for schedules, and a gradient oracle for holes — none of them use rfscope.core.rf.
"""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rfscope.design as design


def test_doctests() -> None:
    res = doctest.testmod(design)
    assert res.attempted >= 10 and res.failed == 0


def _recurrence(spec: list[tuple[int, int, int, int]]) -> tuple[int, int, int]:
    r, j, p = 1, 1, 0
    for k, s, pad, d in spec:
        r, j, p = r + d * (k - 1) * j, j * s, p + pad * j
    return r, j, p


def _grad_support(spec: list[tuple[int, int, int, int]]) -> list[int]:
    """Offsets (from the first) of input pixels that reach one interior unit, all-ones weights."""
    x = torch.ones(1, 1, 400, dtype=torch.float64, requires_grad=True)
    y = x
    for k, s, pad, d in spec:
        y = F.conv1d(y, torch.ones(1, 1, k, dtype=torch.float64), stride=s, padding=pad, dilation=d)
    y[0, 0, y.shape[-1] // 2].backward()
    assert x.grad is not None
    nz = torch.nonzero(x.grad[0, 0]).flatten().tolist()
    return [i - nz[0] for i in nz]


SPECS = [
    [(3, 1, 1, 1)] * 4,
    [(7, 2, 3, 1), (3, 2, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)],
    [(3, 1, 2, 2)] * 3,
    [(3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)],
    [(5, 1, 0, 3), (2, 2, 0, 1), (3, 1, 1, 2)],
]


@pytest.mark.parametrize("spec", SPECS)
def test_stack_rf_matches_recurrence_and_gradient(spec: list[tuple[int, int, int, int]]) -> None:
    res = design.stack_rf([("conv", *t) for t in spec])
    assert (res.size, res.stride, res.padding) == _recurrence(spec)
    seen = _grad_support(spec)
    assert seen[-1] + 1 == res.size
    assert list(res.holes) == [i for i in range(res.size) if i not in seen]
    assert res.coverage == pytest.approx(len(seen) / res.size)


def test_stack_rf_transposed_and_upsample_phases() -> None:
    # k=3, s=2 transposed conv after one input pixel: outputs see 1 or 2 input units
    assert design.stack_rf([("conv_transpose", 3, 2, 1)]).sizes == (1, 2)
    # U-Net k=2,s=2 adds nothing; DCGAN k=4,s=2,p=1 adds j (docs/design.md §1)
    base = [("conv", 3, 2, 1)]
    assert design.stack_rf([*base, ("conv_transpose", 2, 2, 0)]).size == 3
    assert design.stack_rf([*base, ("conv_transpose", 4, 2, 1)]).size == 3 + 2
    assert design.stack_rf([*base, ("upsample", 2)]).stride == 1


def test_layer_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        design.stack_rf([("dense", 3)])
    with pytest.raises(ValueError, match="k, s, d"):
        design.stack_rf([("conv", 0)])
    with pytest.raises(ValueError, match="not a Layer"):
        design.stack_rf([3])  # type: ignore[list-item]


def _dense_rf(rates: tuple[int, ...], k: int) -> tuple[int, bool]:
    mask = 1
    for r in rates:
        mask = _taps_union(mask, r, k)
    return mask.bit_length(), mask == (1 << mask.bit_length()) - 1


def _taps_union(mask: int, r: int, k: int) -> int:
    out = 0
    for t in range(k):
        out |= mask << (t * r)
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
def test_dilation_schedule_is_dense_and_minimal(k: int) -> None:
    for target in range(2, {2: 17, 3: 40, 5: 30}[k]):
        rates = design.dilation_schedule(target, k=k)
        size, dense = _dense_rf(rates, k)
        assert dense and size >= target, (target, rates)
        assert list(rates) == sorted(rates)
        # brute force: no schedule one layer shorter reaches the target densely
        n = len(rates) - 1
        for cand in itertools.product(range(1, target + 1), repeat=n):
            s, d = _dense_rf(cand, k)
            assert not (d and s >= target), (target, cand)
        # and no schedule of this depth with a smaller largest rate
        for cand in itertools.product(range(1, max(rates)), repeat=len(rates)):
            s, d = _dense_rf(cand, k)
            assert not (d and s >= target), (target, rates, cand)


def test_plain_depth() -> None:
    assert [design.plain_depth(t) for t in (1, 2, 3, 4, 5, 15)] == [0, 1, 1, 2, 2, 7]
    with pytest.raises(ValueError):
        design.dilation_schedule(10, k=1)


def test_assert_rf_messages() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, (3, 5)), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                        nn.AdaptiveAvgPool2d(1))
    shape = (1, 3, 32, 32)
    assert design.assert_rf(net, "1", at_least=(7, 9), at_most=(7, 9), input_shape=shape).size == (7, 9)
    with pytest.raises(AssertionError, match=r"larger than at_most 6x9 \(dim 0: 7 > 6\)"):
        design.assert_rf(net, "1", at_most=(6, 9), input_shape=shape)
    with pytest.raises(AssertionError, match="global"):
        design.assert_rf(net, "2", at_most=100, input_shape=shape)
    design.assert_rf(net, "2", at_least=32, input_shape=shape)
    with pytest.raises(AssertionError, match="dilation holes"):
        design.assert_rf(nn.Sequential(nn.Conv2d(3, 3, 3, dilation=2)), "0", full_coverage=True,
                         input_shape=shape)
    design.assert_rf(net, "1", full_coverage=True, input_shape=shape)  # 3 then d=2 fills the gaps
    with pytest.raises(ValueError, match="2 spatial dims"):
        design.assert_rf(net, "1", at_least=(1, 2, 3), input_shape=shape)
