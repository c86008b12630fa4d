"""Which output units to probe, and the mask that selects one of them (channels summed).

A node's layout comes from its static state: per tensor dim a tag (``None`` for
batch/channel/feature dims, summed over; an int for an input spatial axis;
:class:`~rfscope.core.state.Merged` for flattened dims).  Dim 0 is the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rfscope.core.state import DimTag, Merged, TensorRF

__all__ = ["axis_extents", "unit_mask", "default_layout", "layout_of"]


def default_layout(ndim: int, n_spatial: int) -> tuple[DimTag, ...]:
    """``(N, C, *spatial)`` when nothing better is known."""
    if ndim == n_spatial + 2:
        return (None, None, *range(n_spatial))
    return (None,) * ndim


def layout_of(state: TensorRF, shape: Sequence[int], n_spatial: int) -> tuple[DimTag, ...]:
    """The node's dim tags; ``(N, C, *spatial)`` when the analysis could not tell (unknown ops)."""
    if len(state.dims) == len(shape) and any(t is not None for t in state.dims):
        return tuple(state.dims)
    return default_layout(len(shape), n_spatial)


def axis_extents(dims: Sequence[DimTag], shape: Sequence[int]) -> dict[int, int]:
    """Number of units along each input axis that indexes a dim of this tensor."""
    out: dict[int, int] = {}
    for tag, size in zip(dims, shape, strict=False):
        if isinstance(tag, int):
            out.setdefault(tag, size)
        elif isinstance(tag, Merged):
            for t, s in tag.parts:
                if t is not None:
                    out.setdefault(t, s)
    return out


def _onehot(size: int, index: int | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if index is None:
        return torch.ones(size, dtype=dtype, device=device)
    v = torch.zeros(size, dtype=dtype, device=device)
    v[index] = 1
    return v


def unit_mask(
    dims: Sequence[DimTag],
    shape: Sequence[int],
    index: Mapping[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A ``shape[1:]`` tensor that is 1 at unit ``index`` (per input axis), all channels.

    ``(out[b] * mask).sum()`` is the channel-summed unit of sample ``b``.
    """
    dev = torch.device(device)
    vecs: list[torch.Tensor] = []
    for tag, size in zip(list(dims)[1:], list(shape)[1:], strict=False):
        if isinstance(tag, int):
            vecs.append(_onehot(size, index.get(tag), dtype, dev))
        elif isinstance(tag, Merged):
            sub = torch.ones((), dtype=dtype, device=dev)
            for t, s in tag.parts:
                v = _onehot(s, index.get(t) if t is not None else None, dtype, dev)
                sub = (sub.unsqueeze(-1) * v).reshape(-1)
            vecs.append(sub.reshape(size))
        else:
            vecs.append(torch.ones(size, dtype=dtype, device=dev))
    mask = torch.ones((), dtype=dtype, device=dev)
    for i, v in enumerate(vecs):
        shp = [1] * len(vecs)
        shp[i] = v.numel()
        mask = mask * v.reshape(shp)
    return mask
