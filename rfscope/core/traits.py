"""Traits: what kind of op a plugin handles, for the passes that read records.

A plugin lists its traits once (``Plugin.traits``); counting, the design diagnostics and the
initialisation check ask the node's record instead of keeping their own tables of targets.
A trait is a claim: a plugin that leaves one out is treated conservatively (the initialisation
check, for instance, stops following units at an op it knows nothing about and stays silent).

>>> POINTWISE in frozenset({POINTWISE, RELU})
True
"""

__all__ = ["POINTWISE", "RELU", "NORM", "FLATTEN", "CHANNELWISE", "BATCHNORM"]

#: one input, same shape and channels, each output element from the same input element
#: (activations, eval BatchNorm, dropout, copies): passes symmetry and scale through
POINTWISE = "pointwise"
#: zero for negative inputs (ReLU, ReLU6): a unit whose weights and bias are zero is dead
RELU = "relu"
#: a normalisation layer (BatchNorm, LayerNorm, GroupNorm...): the scale before it does not matter
NORM = "norm"
#: flattens dims (``torch.flatten``, ``nn.Flatten``)
FLATTEN = "flatten"
#: output channel ``c`` comes from input channel ``c`` alone, deterministically, by the same
#: function for every channel up to the op's own per-channel parameters (a module's 1-d tensors
#: with one value per channel, or one shared value): deterministic activations, pooling, eval
#: BatchNorm, PReLU, copies.  The initialisation check follows units through it (copies stay
#: copies when those parameters agree); dropout and RReLU are random, so they are not channelwise
CHANNELWISE = "channelwise"
#: a BatchNorm layer: training normalises each channel with batch statistics, so a constant
#: channel comes out as its ``beta`` (the initialisation check's dead-unit rule reads it)
BATCHNORM = "batchnorm"
