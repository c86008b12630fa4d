"""Initialisation mistakes that `rfscope analyze --check-init` finds, and the same nets done right.

    rfscope analyze examples/init_examples.py --check-init                  # zero-initialised MLP
    rfscope analyze examples/init_examples.py:zero_cnn --check-init         # zero-initialised CNN
    rfscope analyze examples/init_examples.py:constant_cnn --check-init     # constant weights
    rfscope analyze examples/init_examples.py:deep_plain_bad --check-init   # N(0, 0.01^2) x 12 layers
    rfscope analyze examples/init_examples.py:deep_plain_good --check-init  # He init: clean
    rfscope analyze examples/init_examples.py:mlp_good --check-init         # PyTorch default: clean
    rfscope analyze examples/init_examples.py:cnn_good --check-init         # PyTorch default: clean

Zero or constant weights make all units of a layer identical: same output, same
gradient, they never diverge (symmetry; exit status 1).  The zero MLP (tanh) shows it
as `symmetric-units`; the zero CNN's units feed ReLUs with zero weights and bias, so
they are reported as `dead-units` (output and gradient exactly 0), the stronger case.  A deep plain ReLU net with
std 0.01 shrinks the signal by about sqrt(fan_in * 0.01^2 / 2) = 0.085 per layer: it
has vanished after a few layers.  He init (std sqrt(2/fan_in)) keeps it constant.
"""

import torch
import torch.nn as nn

input_shape = (1, 3, 16, 16)
WIDTH = 16
DEPTH = 12


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 10))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1), nn.ReLU(), nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 10))


def plain(depth: int = DEPTH) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, WIDTH, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def _fill(net: nn.Module, weight: float | None, std: float | None = None) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                if weight is not None:
                    nn.init.constant_(m.weight, weight)
                elif std is not None:
                    nn.init.normal_(m.weight, 0.0, std)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return net


def zero_mlp() -> nn.Module:
    return _fill(mlp(), 0.0)


def zero_cnn() -> nn.Module:
    return _fill(cnn(), 0.0)


def constant_cnn() -> nn.Module:
    return _fill(cnn(), 0.05)


def deep_plain_bad() -> nn.Module:
    return _fill(plain(), None, std=0.01)


def deep_plain_good() -> nn.Module:
    return _fill(plain(), None)


mlp_good = mlp
cnn_good = cnn
model = zero_mlp
