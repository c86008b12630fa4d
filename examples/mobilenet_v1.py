"""MobileNet v1 (Howard et al. 2017) with depthwise-separable convs, and its standard-conv twin.

    rfscope analyze examples/mobilenet_v1.py            # depthwise 3x3 + pointwise 1x1 blocks
    rfscope analyze examples/mobilenet_v1.py:standard   # the same net with one 3x3 conv per block

Full depth (13 blocks) at width multiplier 1/4 to stay small.  Both nets have the same
RF, 315x315 at stride 32 (the published mobilenet_v1 figure; effective padding 157 here
because PyTorch pads 1 on both sides where TF-slim's 'SAME' pads right/bottom), but
each separable block has 1/C_out + 1/9 of the standard conv's weights and MACs.
`python examples/mobilenet_v1.py` prints the per-block savings that rfscope reports.
"""

import torch.nn as nn

input_shape = (1, 3, 224, 224)

# (output channels at width 1, stride) of the 13 separable blocks
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def mobilenet(separable: bool = True, alpha: float = 0.25, classes: int = 10) -> nn.Sequential:
    c = int(32 * alpha)
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), *_bn_relu(c)]
    for out, s in BLOCKS:
        o = int(out * alpha)
        if separable:
            layers += [nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), *_bn_relu(c),
                       nn.Conv2d(c, o, 1, bias=False), *_bn_relu(o)]
        else:
            layers += [nn.Conv2d(c, o, 3, s, 1, bias=False), *_bn_relu(o)]
        c = o
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def model() -> nn.Module:
    return mobilenet(separable=True)


def standard() -> nn.Module:
    return mobilenet(separable=False)


if __name__ == "__main__":
    import rfscope

    sep = rfscope.analyze(model(), input_shape)
    std = rfscope.analyze(standard(), input_shape)
    print(f"{'depthwise':>10} {'pointwise':>10} {'C_in':>5} {'C_out':>5} {'params':>7} {'standard':>9} "
          f"{'ratio':>6} {'1/C_out+1/k^2':>13} {'MACs ratio':>10}")
    for b in sep.separable_blocks:
        dw, pw = sep.records[b.depthwise].label, sep.records[b.pointwise].label
        print(f"{dw:>10} {pw:>10} {b.c_in:>5} {b.c_out:>5} {b.params:>7} {b.standard_params:>9} "
              f"{b.params_ratio:>6.3f} {b.formula_ratio:>13.3f} {b.macs_ratio:>10.3f}")
    a, b = sep.summary, std.summary
    print(f"whole net: params {a.params_total:,} vs {b.params_total:,} ({a.params_total / b.params_total:.3f}), "
          f"MACs {a.macs:,} vs {b.macs:,} ({a.macs / b.macs:.3f})")
    print("RF of the last conv:", sep.rf("78").size, "standard twin:", std.rf("39").size)
