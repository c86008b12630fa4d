"""rfscope's built-in plugins, one module per family of ops.

:data:`BUILTIN` is the one list of them: the registry imports each and calls its ``register``
(no installation step involved), and a test checks it against the files here.
"""

BUILTIN = (
    "aten",
    "attention",
    "capsule",
    "conv",
    "einsum",
    "index",
    "linear",
    "norm",
    "normalize",
    "pad",
    "pointwise",
    "pool",
    "reduce",
    "rnn",
    "select",
    "shape",
    "torchvision_ops",
    "upsample",
)
