"""Dilated convolution and gridding: a DeepLab-style context module, gridded and fixed.

    rfscope analyze examples/dilated_context.py          # rates 2,2,2: holes, a `gridding` warning
    rfscope analyze examples/dilated_context.py:fixed    # rates 1,2,5 (hybrid): dense, no warning

A stride-2 stem, then three 3x3 convs dilated at stride 2: with rates 2,2,2 every tap
jumps 4 input pixels, but the stem only fills 3 of them, so one pixel in four is never
seen (coverage 21/27).  Rates 1,2,5 (Wang et al. 2018, hybrid dilated convolution)
reach further (35) without holes.  `rfscope.design.dilation_schedule` finds such rates.
"""

import torch.nn as nn

input_shape = (1, 3, 64, 64)


class ContextNet(nn.Module):
    def __init__(self, rates: tuple[int, ...], width: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 1), nn.ReLU())
        self.context = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, width, 3, padding=r, dilation=r), nn.ReLU()) for r in rates
        ])
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        return self.head(self.context(self.stem(x)))


def model() -> nn.Module:
    return ContextNet((2, 2, 2))


def fixed() -> nn.Module:
    return ContextNet((1, 2, 5))


if __name__ == "__main__":
    from rfscope import design

    for rates in ((2, 2, 2), (1, 2, 5)):
        r = design.stack_rf([("conv", 3, 2, 1)] + [("conv", 3, 1, d, d) for d in rates])
        print(f"stem + rates {rates}: RF {r.size}, coverage {r.coverage}, holes {list(r.holes)}")
    print("dense schedule for RF >= 35 on the input grid:", design.dilation_schedule(35))
