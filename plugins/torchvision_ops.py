"""torchvision's fx-wrapped functions (only when torchvision is installed)."""

from __future__ import annotations

from rfscope.context import OpContext
from rfscope.ops import same_state
from rfscope.registry import Registry
from rfscope.state import TensorRF


def _stochastic_depth(ctx: OpContext) -> TensorRF:
    # Drops whole samples/rows (train) or is the identity (eval): never moves positions.
    return same_state(ctx)


def register(reg: Registry) -> None:
    reg.when_imported("torchvision", _register_now)


def _register_now(reg: Registry) -> None:
    try:
        from torchvision.ops import stochastic_depth as sd_mod
        from torchvision.ops.stochastic_depth import StochasticDepth
    except Exception:  # noqa: BLE001 - torchvision is optional
        return
    fn = getattr(sd_mod, "stochastic_depth", None) if not callable(sd_mod) else sd_mod
    targets = [StochasticDepth] + ([fn] if fn is not None else [])
    reg.add("torchvision_stochastic_depth", targets, rf=_stochastic_depth)
