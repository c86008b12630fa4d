"""Receptive fields published by others (Araujo et al., Distill 2019; torchvision twins): not computed by us."""

import pytest
import torch.nn as nn

import rfscope

tv = pytest.importorskip("torchvision")


def _rf(model, name, shape=(1, 3, 224, 224)):
    r = rfscope.analyze(model, input_shape=shape).rf(name)
    assert r.status == "exact"
    return r.size[0], r.stride[0], r.padding[0], r.size[1], r.stride[1], r.padding[1]


def test_vgg16_pool5_and_conv5_3():
    m = tv.models.vgg16()
    assert _rf(m, "features.30") == (212, 32, 90) * 2
    assert _rf(m, "features.28") == (196, 16, 90) * 2


def test_inception_v3_mixed_7c():
    m = tv.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    assert _rf(m, "Mixed_7c", (1, 3, 299, 299)) == (1311, 32, 618) * 2


@pytest.mark.parametrize("layer,size", [("layer1", 35), ("layer2", 91), ("layer3", 267), ("layer4", 427)])
def test_resnet50_stages(layer, size):
    r = _rf(tv.models.resnet50(), layer)
    assert r[0] == size and r[3] == size
    assert r[1] == 2 ** (int(layer[-1]) + 1)


def test_resnet50_layer4_padding():
    assert _rf(tv.models.resnet50(), "layer4") == (427, 32, 213) * 2


class _Pad(nn.Module):
    def forward(self, x):
        return nn.functional.pad(x, (1, 0, 1, 0))


class GoogleAligned(nn.Module):
    """receptive_field's aligned toy graph: expect r=3, j=4, P=1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1, stride=4)
        self.pad = _Pad()
        self.b1 = nn.Conv2d(1, 1, 3, stride=2)
        self.b2 = nn.Conv2d(1, 1, 1, stride=2)

    def forward(self, x):
        return nn.functional.relu(self.a(x) + self.b2(self.b1(self.pad(x))))


def test_google_aligned_toy_graph():
    r = rfscope.analyze(GoogleAligned(), input_shape=(1, 1, 32, 32)).rf("output")
    assert (r.size, r.stride, r.padding) == ((3, 3), (4, 4), (1, 1))


class GoogleMisaligned(nn.Module):
    """Branches with different jumps meet in an add: must be reported, not averaged."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1, stride=4)
        self.b = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.c = nn.Conv2d(1, 1, 3, stride=1, padding=1)

    def forward(self, x):
        return self.a(x)[..., :4, :4] + self.c(self.b(x))[..., :4, :4]


def test_google_misaligned_reported():
    # receptive_field refuses this graph (one RF per layer cannot hold both jumps); per position it
    # is exact: unit i of the stride-4 branch sees pixel 4i, the stride-2 branch (3x3/2 then 3x3/1)
    # sees [2i - 3, 2i + 3]; their union is one box while 4i lies inside, two boxes after
    rep = rfscope.analyze(GoogleMisaligned(), input_shape=(1, 1, 16, 16))
    r = rep.rf("output")
    assert r.status == "exact" and r.table is not None and r.stride == (None, None)
    boxes = [sorted(r.table.boxes((0, 0, i, i))) for i in range(4)]
    assert boxes == [[((0, 3), (0, 3))], [((0, 5), (0, 5))],  # clipped to the input inside a table
                     [((1, 7), (1, 7)), ((8, 8), (8, 8))], [((3, 9), (3, 9)), ((12, 12), (12, 12))]]
