"""A small U-Net: down path, transposed-conv up path (k=2, s=2), skip concatenations.

    rfscope analyze examples/unet.py

The k=2, s=2 transposed convs split every unit into 2x2 children that all see the
same pixels: the stride goes back from 4 (bottleneck) to 2 (`up2`) and 1 (`up1`),
the RF does not grow (32 at the bottleneck and at `up2`), and since 2 divides 2 there
is no checkerboard warning.  The skips are concatenated with the upsampled path: the
union of both windows.  Because 2x2 children share their parent's window, a 3x3 conv
after `up1` gives units that see 40 or 44 pixels depending on their phase (JSON
`phase_sizes`); the table shows the largest.
"""

import torch
import torch.nn as nn

input_shape = (1, 1, 64, 64)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 2) -> None:
        super().__init__()
        self.enc1, self.enc2 = double_conv(1, c), double_conv(c, 2 * c)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = double_conv(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = double_conv(2 * c, c)
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


model = UNet
