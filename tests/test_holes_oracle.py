"""Unions that are not one box, on the timm models that need them, against the gradient oracle.

* **Holes** (docs/design.md §2b, "Holes"): MViTv2 pools its keys with a 3x3 conv of stride 4, so
  the pixels between two keys' windows are seen by no key, and a query's attention sees runs of
  pixels at a step; MaxViT-v2's grid attention mixes tokens a grid cell apart whose windows do not
  touch.  rfscope states such a union as one part whose box is clipped to a comb (runs of one width
  at one step per axis).
* **L-shapes**: NextViT pools the keys of its attention with an ``AvgPool1d`` over the flattened
  tokens; where a row's length is not a multiple of the kernel a key covers the end of one row and
  the start of the next.  rfscope keeps the window's members as parts of their own.

For each listed node, a few elements are compared with the oracle (``tests/masks.py``,
``check_node``: the exact set of pixels, holes included); each model must come out with no
``unknown`` node, and the node that carries the mechanism must really use it (a comb, or several
parts), so the test fails if the mechanism is bypassed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn as nn
from masks import cached_on_one_thread, check_node
from oracle import Oracle

import rfscope

timm = pytest.importorskip("timm")


def _mvitv2() -> nn.Module:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
    return MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=32, num_heads=1), img_size=(64, 64))


def _maxxvitv2() -> nn.Module:
    from timm.models import maxxvit
    cfg = maxxvit.MaxxVitCfg(embed_dim=(32, 64), depths=(1, 1), block_type=("M", "M"), stem_width=(8, 16),
                             **maxxvit._next_cfg(no_block_attn=True, rel_pos_type="bias"))
    return maxxvit.MaxxVit(cfg, img_size=128)


def _nextvit() -> nn.Module:
    from timm.models.nextvit import NextViT
    return NextViT(3, depths=(1, 1, 5, 1), stem_chs=(16, 16, 16), drop_path_rate=0.0)


#: key -> (builder, image size)
MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "mvitv2": (_mvitv2, 64),
    "maxxvitv2": (_maxxvitv2, 128),
    "nextvit": (_nextvit, 96),
}

#: (model, node, what it checks, the mechanism the node's table must use: "comb" / "parts" / None)
NODES: list[tuple[str, str, str, str | None]] = [
    ("mvitv2", "stages.0.blocks.0.attn", "pooling attention over keys pooled 3x3, stride 4: holes", "comb"),
    ("mvitv2", "stages.0", "the block: holes plus the token's own box", "comb"),
    ("mvitv2", "stages.1.blocks.0.attn.pool_k", "a depthwise conv over tokens that see holes", "comb"),
    ("mvitv2", "stages.1", "next stage", None),
    ("mvitv2", "stages.3", "last stage", None),
    ("maxxvitv2", "stages.0.blocks.0.conv", "MBConv before the grid attention (one box)", None),
    ("maxxvitv2", "stages.0.blocks.0.attn_grid.attn", "grid attention: windows a grid cell apart, holes", "comb"),
    ("maxxvitv2", "stages.0.blocks.0", "the block", "comb"),
    ("maxxvitv2", "stages.1.blocks.0.conv.conv_dw", "a strided depthwise conv over holes", "comb"),
    ("maxxvitv2", "stages.1", "next stage", None),
    ("nextvit", "stages.1.blocks.0.e_mhsa.sr", "AvgPool1d(16) over 12x12 flattened tokens: L-shapes", "parts"),
    ("nextvit", "stages.1.blocks.0.e_mhsa", "attention over the L-shaped keys", None),
    ("nextvit", "stages.2", "next stage (AvgPool1d(4) over 6x6 tokens)", None),
]


class Case:
    """A model, its report and the oracle capturing every listed node."""

    def __init__(self, key: str) -> None:
        build, size = MODELS[key]
        torch.manual_seed(0)
        self.model = build().eval()
        self.shape = (1, 3, size, size)
        self.rep = rfscope.analyze(self.model, input_shape=self.shape)
        self.oracle = Oracle(self.model, self.shape, module=[n for k, n, *_ in NODES if k == key])


@pytest.fixture(scope="module")
def cases() -> Iterator[Callable[[str], Case]]:
    yield from cached_on_one_thread(Case)


def _node_table(rep: Any, node: str) -> Any:
    return rep.rf(node).table


@pytest.mark.parametrize("key,node,what,uses", [pytest.param(*n, id=f"{n[0]}:{n[1]}") for n in NODES])
def test_node_against_the_oracle(key: str, node: str, what: str, uses: str | None,
                                 cases: Callable[[str], Case]) -> None:
    c = cases(key)
    check_node(c.rep, c.oracle, node, n=8)
    t = _node_table(c.rep, node)
    if uses == "comb":
        assert t is not None and any(p.comb for p in t.parts), (node, "no part with holes")
    elif uses == "parts":
        assert t is not None and len(t.parts) > 1, (node, "one part only")


@pytest.mark.parametrize("key", list(MODELS))
def test_no_unknown_node(key: str, cases: Callable[[str], Case]) -> None:
    rep = cases(key).rep
    assert [n for n, r in rep.records.items() if r.rf is not None and r.rf.status == "unknown"] == []


def test_holes_are_checked_pixel_by_pixel(cases: Callable[[str], Case]) -> None:
    """The grid attention's element (0, 0, 0, 0) of the first block sees runs with gaps (its pixels
    are fewer than its bounding box), and the oracle sees the same gaps."""
    c = cases("maxxvitv2")
    r = c.rep.rf("stages.0.blocks.0.attn_grid.attn")
    boxes = r.table.boxes((0, 0, 0, 0))
    area = sum((b[0][1] - b[0][0] + 1) * (b[1][1] - b[1][0] + 1) for b in boxes)
    box = r.table.box((0, 0, 0, 0))
    assert area < (box[0][1] - box[0][0] + 1) * (box[1][1] - box[1][0] + 1)
    check_node(c.rep, c.oracle, "stages.0.blocks.0.attn_grid.attn", indices=[(0, 0, 0, 0)])
