"""rfscope agrees with the gradient oracle on torchvision models (weights=None, small inputs).

Inputs are smaller than the deep layers' RFs, so (docs/design.md §5) the
borders are used: the first unit's last pixel gives ``r - 1 - P``, the last two
units' first pixels give ``j`` and ``P`` (torchvision pads with zeros and never
more than a kernel's reach, so those edge paths run through real pixels).
Units whose whole window lies inside the input, at least one stride from the
border, are compared pixel for pixel.  EfficientNet's SE blocks make its
stages ``global``; their local RF is compared with the oracle with the SE
gating path detached.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from oracle import Oracle

import rfscope

tv = pytest.importorskip("torchvision")


def _check(model: nn.Module, shape: tuple[int, ...], names: list[str], local: bool = False) -> None:
    rep = rfscope.analyze(model, input_shape=shape)
    orc = Oracle(model, shape, names, local=local, dtype=torch.float32, batch=5)
    size = shape[2:]
    for name in names:
        r = rep.rf(name)
        if local:
            assert r.status == "global", (name, r.status)
            r = rep.rf(name, local=True)
        assert r.status == "exact", (name, r.status, r.reason)
        out = orc.out_size_of(name)
        n = len(out)
        j = [int(s) if s is not None else 1 for s in r.stride]
        centre = [o // 2 for o in out]
        probes = [[0] * n, [o - 1 for o in out], [o - 2 for o in out], centre, [c + 1 for c in centre]]
        got = orc.supports(probes, name)
        first, last1, last2 = got[0], got[1], got[2]
        checks = 0
        w0 = r.window(probes[0])
        for a in range(n):
            if w0[a][1] < size[a]:  # the edge is inside the input
                assert first[a][-1] == w0[a][1], (name, "first unit hi", a, first[a][-1], w0[a])
                checks += 1
        for idx, g in ((probes[1], last1), (probes[2], last2)):
            w = r.window(idx)
            for a in range(n):
                if w[a][0] >= 0:
                    assert g[a][0] == w[a][0], (name, "last unit lo", idx, a, g[a][0], w[a])
                    checks += 1
        for idx, g in zip(probes[3:], got[3:], strict=True):
            w = r.window(idx)
            if all(j[a] <= w[a][0] and w[a][1] < size[a] - j[a] for a in range(n)):
                assert g == r.pixels(idx), (name, idx)
                checks += 1
        assert checks >= 2, f"{name}: input {shape} too small to check anything"


class Trunk(nn.Module):
    """The children of a torchvision model whose forward runs them in order, up to ``last``
    (names kept): the RF of ``last`` does not depend on anything after it."""

    def __init__(self, model: nn.Module, last: str) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
            if name == last:
                break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def _meta(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Build on the meta device: no weight initialisation (rfscope and the oracle need none)."""

    def make() -> nn.Module:
        with torch.device("meta"):
            return build()

    return make


# Models are cut after the last checked module (``[:k]``, Trunk): later layers cannot change its RF.
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], list[str], bool]] = [
    ("resnet18", _meta(lambda: Trunk(tv.models.resnet18(), "layer3")), (1, 3, 112, 112),
     ["layer1", "layer2", "layer3"], False),
    ("resnet50", _meta(lambda: Trunk(tv.models.resnet50(), "layer3")), (1, 3, 144, 144),
     ["layer1", "layer2", "layer3"], False),
    ("vgg11", _meta(lambda: tv.models.vgg11().features[:11]), (1, 3, 64, 48), ["2", "5", "10"], False),
    ("mobilenet_v2", _meta(lambda: tv.models.mobilenet_v2().features[:8]), (1, 3, 64, 64), ["3", "7"], False),
    ("densenet121", _meta(lambda: tv.models.densenet121().features[:6]), (1, 3, 64, 64),
     ["denseblock1", "transition1"], False),
    ("inception_v3", _meta(lambda: Trunk(tv.models.inception_v3(aux_logits=False, init_weights=False), "Mixed_5b")),
     (1, 3, 79, 79), ["Conv2d_4a_3x3", "Mixed_5b"], False),
    ("efficientnet_b0", _meta(lambda: tv.models.efficientnet_b0().features[:4]), (1, 3, 64, 64), ["2", "3"],
     True),
    ("convnext_tiny", _meta(lambda: tv.models.convnext_tiny().features[:2]), (1, 3, 64, 64), ["1"], False),
]


@pytest.mark.parametrize("name,build,shape,names,local", CASES, ids=[c[0] for c in CASES])
def test_torchvision_matches_oracle(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...],
                                    names: list[str], local: bool) -> None:
    _check(build(), shape, names, local)
