"""A small CapsNet (Sabour et al. 2017): conv -> primary capsules -> digit capsules.

    rfscope analyze examples/capsnet.py

Primary capsules are a 9x9 stride-2 conv read as 8 types of 8-d capsules at 6x6
positions: each has the local RF of the two convs (17x17, stride 2).  Digit capsules
route every one of the 288 primary capsules to each of 10 digit capsules by agreement
(3 iterations, squash): they are `global`.  Their parameters are the transformation
matrices W (288 x 10 x 16 x 8 = 368,640), counted with the rest.
"""

import torch.nn as nn

from rfscope.models.capsule import DigitCaps, PrimaryCaps

input_shape = (1, 1, 28, 28)


class CapsNet(nn.Module):
    def __init__(self, width: int = 32, types: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 9)
        self.relu = nn.ReLU()
        self.primary = PrimaryCaps(width, types=types, dim=8, k=9, stride=2)
        self.digits = DigitCaps(in_caps=types * 6 * 6, in_dim=8, out_caps=classes, out_dim=16, iterations=3)

    def forward(self, x):
        v = self.digits(self.primary(self.relu(self.conv1(x))))
        return v.norm(dim=-1)  # class scores: capsule lengths


model = CapsNet
