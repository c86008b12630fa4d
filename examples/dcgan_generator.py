"""Transposed convolutions in a DCGAN-style generator, and the checkerboard warning.

    rfscope analyze examples/dcgan_generator.py              # k=4, s=2, p=1: even overlap, no warning
    rfscope analyze examples/dcgan_generator.py:uneven       # k=3, s=2: `checkerboard` warnings
    rfscope analyze examples/dcgan_generator.py:resize_conv  # nearest x2 then 3x3 conv: no warning

The generator starts from the 4x4 map that DCGAN's first layer projects the latent
vector to (RF numbers are then in units of that 4x4 grid).  Each k=4, s=2, p=1 layer
halves the stride (1/2, 1/4, 1/8) and every output unit gets 2 taps per dimension.
With k=3, s=2 the output phases get 1 and 2 taps alternately: uneven overlap, the
cause of checkerboard artifacts (Odena et al. 2016); the RF size per phase differs
too (`phase_sizes` in the JSON).
"""

import torch.nn as nn

input_shape = (1, 64, 4, 4)


def _up(c_in: int, c_out: int, kind: str) -> list[nn.Module]:
    if kind == "deconv4":
        return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
    if kind == "deconv3":
        return [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)]
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]


def generator(kind: str = "deconv4", c: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        layers += [*_up(c >> i, c >> (i + 1), kind), nn.BatchNorm2d(c >> (i + 1)), nn.ReLU()]
    layers += [*_up(c >> 2, 3, kind), nn.Tanh()]
    return nn.Sequential(*layers)


def model() -> nn.Module:
    return generator("deconv4")


def uneven() -> nn.Module:
    return generator("deconv3")


def resize_conv() -> nn.Module:
    return generator("resize")
