"""Load a trained state dict into a *copy* of a model (``--weights ckpt.pt``).

Checkpoints are read with ``torch.load(weights_only=True)``: no pickled code runs.
The user's model is never modified; every command that needs trained weights
(analysis, init checks, probes) works on the returned copy.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["WeightsError", "load_state_dict", "load_weights"]

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net")


class WeightsError(ValueError):
    """The checkpoint is missing, unreadable, or does not match the model."""


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_failure(e: Exception) -> str:
    """torch.load's (long) error, in a few words."""
    msg = str(e)
    if "Unsupported global" in msg:  # the weights_only allow-list refused a pickled object
        glob = re.search(r"GLOBAL ([\w.]+)", msg)
        what = f" ({glob.group(1)})" if glob else ""
        return f"it holds pickled Python objects{what}, which are never loaded; save model.state_dict() instead"
    if "WeightsUnpickler error:" in msg:
        detail = next((ln.strip() for ln in msg.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()), "")
        return f"not a torch.save checkpoint ({detail[:120]})"
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return f"{type(e).__name__}: {first[:200]}".rstrip(": ")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a state dict, or one wrapped as ``{"state_dict": ...}``."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise WeightsError(f"checkpoint {str(p)!r} is a directory; give a file saved with torch.save(state_dict)")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user error
        why = _load_failure(e)
        raise WeightsError(f"cannot read checkpoint {str(p)!r} with torch.load(weights_only=True): {why}") from e
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in _WRAPPERS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"checkpoint {str(p)!r} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # checkpoints saved from DataParallel / torch.compile prefix every key
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> torch.nn.Module:
    """A deep copy of ``model`` with the checkpoint at ``path`` loaded (all keys must match).

    Missing or unexpected keys and shape mismatches are a :class:`WeightsError` that
    lists them.  A model built on the ``meta`` device gets real tensors from the checkpoint.
    """
    sd = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        raise WeightsError(f"checkpoint {str(path)!r} does not match the model ({'; '.join(parts)})")
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
           if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"checkpoint {str(path)!r} has tensors of the wrong shape: {_names(bad, 3)}")
    cp = copy.deepcopy(model)
    on_meta = any(t.device.type == "meta" for t in own.values())
    if not on_meta:
        cp.load_state_dict(sd, strict=True)
        return cp
    # assign=True gives every key its own tensor: re-tie parameters the model shares
    tied: dict[int, list[str]] = {}
    for name, prm in cp.named_parameters(remove_duplicate=False):
        tied.setdefault(id(prm), []).append(name)
    cp.load_state_dict(sd, strict=True, assign=True)
    for names in tied.values():
        first = cp.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(cp.get_submodule(owner), attr, first)
    return cp
