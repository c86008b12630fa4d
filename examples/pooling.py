"""Downsampling by max pooling, average pooling or a strided conv, then global pooling.

    rfscope analyze examples/pooling.py             # max pooling (the default `model`)
    rfscope analyze examples/pooling.py:avg         # average pooling
    rfscope analyze examples/pooling.py:strided     # 2x2 stride-2 convs

All three grow the RF identically (a 2x2 stride-2 window adds one jump: 3 -> 4 -> 8 -> 10
-> 18) and double the stride; only the strided conv costs parameters (C*C*4 + C each).
The final AdaptiveAvgPool2d(1) makes the pooled features and the classifier `global`:
they see the whole 32x32 image, whatever the 18x18 RF of the last conv.
"""

import torch.nn as nn

input_shape = (1, 3, 32, 32)
WIDTH = 16


def _net(down: str) -> nn.Module:
    def downsample() -> nn.Module:
        if down == "max":
            return nn.MaxPool2d(2, 2)
        if down == "avg":
            return nn.AvgPool2d(2, 2)
        return nn.Conv2d(WIDTH, WIDTH, 2, stride=2)

    return nn.Sequential(
        nn.Conv2d(3, WIDTH, 3, padding=1), nn.ReLU(), downsample(),
        nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU(), downsample(),
        nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 10),
    )


def model() -> nn.Module:
    return _net("max")


def avg() -> nn.Module:
    return _net("avg")


def strided() -> nn.Module:
    return _net("conv")
