"""Traits: what kind of op a plugin handles, for the passes that read records.

A plugin lists its traits once (``Plugin.traits``); counting, the design diagnostics and the
initialisation check ask the node's record instead of keeping their own tables of targets.

>>> POINTWISE in frozenset({POINTWISE, RELU})
True
"""

__all__ = ["POINTWISE", "RELU", "NORM", "FLATTEN", "ALL"]

#: one input, same shape and channels, each output element from the same input element
#: (activations, eval BatchNorm, dropout, copies): passes symmetry and scale through
POINTWISE = "pointwise"
#: zero for negative inputs (ReLU, ReLU6): a unit whose weights and bias are zero is dead
RELU = "relu"
#: a normalisation layer (BatchNorm, LayerNorm, GroupNorm...): the scale before it does not matter
NORM = "norm"
#: flattens dims (``torch.flatten``, ``nn.Flatten``)
FLATTEN = "flatten"

ALL = frozenset({POINTWISE, RELU, NORM, FLATTEN})
