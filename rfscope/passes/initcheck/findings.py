"""What the initialisation check returns: :class:`Finding`, its error, and the thresholds it uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rfscope.core.errors import RfscopeError

__all__ = ["Finding", "InitCheckError", "MEAN_RATIO", "SCALE_FACTOR", "SIGNAL_RATIO"]

#: ``nonzero-mean``: ``|mean|`` above this times the std
MEAN_RATIO = 1.0
#: ``scale``: std more than this factor outside the usual inits' range
SCALE_FACTOR = 4.0
#: ``signal-exploding`` / ``signal-vanishing``: activation std this far from the first layer's
SIGNAL_RATIO = 1e3


class InitCheckError(RfscopeError, ValueError):
    """The init check cannot run on this model (meta weights, bad arguments)."""


@dataclass(frozen=True)
class Finding:
    """One init-check result: ``check`` id, ``severity`` (error/warning/info), where, and the numbers."""

    check: str
    severity: str
    message: str
    param: str | None = None
    node: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: the node's row label (module path / call), for display
    layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": self.message,
                "param": self.param, "node": self.node, "layer": self.layer, "evidence": self.evidence}

    def __str__(self) -> str:
        where = self.param or self.layer or self.node or "model"
        return f"{self.severity}: {self.check}: {where}: {self.message}"


def rounded(x: Any) -> float:
    """``x`` to 6 significant digits (evidence numbers)."""
    return float(f"{float(x):.6g}")
