"""Built-in plugin modules, loaded directly when rfscope runs from an uninstalled tree."""

MODULES = (
    "aten", "attention", "capsule", "conv", "linear", "norm", "pad", "pointwise", "pool", "reduce", "shape",
    "torchvision_ops", "upsample",
)
