"""Load a trained state dict into a *copy* of a model (``--weights ckpt.pt``).

Checkpoints are read with ``torch.load(weights_only=True)``: no pickled code runs.
``.safetensors`` files are read with the ``safetensors`` package when it is installed.
Training checkpoints are unwrapped: the state dict may sit under ``state_dict``, ``model``,
``module``, ``ema`` ... next to metadata (epoch, optimizer), and a ``module.`` / ``model.`` /
``_orig_mod.`` prefix on every key is stripped when that makes the keys match the model;
a :class:`WeightsNote` warning says which entry was loaded.
The user's model is never modified; every command that needs trained weights
(analysis, init checks, probes) works on the returned copy.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfscope.core.errors import RfscopeError

__all__ = ["WeightsError", "WeightsNote", "load_state_dict", "load_weights"]

#: entries that hold the model's state dict, in order of preference (EMA copies last)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net",
             "ema", "model_ema", "state_dict_ema", "ema_state_dict")
#: prefixes wrappers put on every key: DataParallel/DDP, Lightning, torch.compile
_PREFIXES = ("module.", "model.", "_orig_mod.")
_EXTRA = "_extra_state"  # get_extra_state()'s key: any picklable value, not only a tensor


class WeightsError(RfscopeError, ValueError):
    """The checkpoint is missing, unreadable, or does not match the model."""


class WeightsNote(UserWarning):
    """How a checkpoint was read (which entry, which key prefix was stripped)."""


@dataclass
class _Candidate:
    where: str  # "" (the whole file) or "['state_dict']"
    sd: dict[str, Any]
    stripped: str = ""  # the prefix removed from every key

    def describe(self) -> str:
        parts = [f"its {self.where} entry"] if self.where else []
        if self.stripped:
            parts.append(f"the {self.stripped!r} prefix stripped from every key")
        return ", ".join(parts)


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


_BOILERPLATE = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue",
                "In PyTorch 2.6")


def _load_failure(e: Exception) -> str:
    """torch.load's (long) error, in one line that keeps what matters."""
    msg = str(e)
    glob = re.search(r"GLOBAL ([\w.]+)", msg)
    if glob:  # the weights_only allow-list refused a pickled function or class
        return (f"it holds pickled Python objects (global {glob.group(1)}), and weights_only loading refused "
                "code: nothing in the file was run; save model.state_dict() instead")
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if "Weights only load failed" in msg:
        detail = [ln.replace("WeightsUnpickler error:", "").strip() for ln in lines
                  if not ln.startswith(_BOILERPLATE)]
        detail = [d for d in detail if d]
        return "not a torch.save checkpoint that weights_only loading accepts" + (
            f" ({'; '.join(detail)})" if detail else "")
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _looks_like_safetensors(p: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    try:
        with open(p, "rb") as f:
            head = f.read(10)
    except OSError:
        return False
    return len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000


def _read(p: Path) -> Any:
    if not p.exists():
        raise WeightsError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise WeightsError(f"checkpoint {str(p)!r} is a directory; give a file saved with torch.save(state_dict)")
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise WeightsError(f"reading {str(p)!r} needs the safetensors package: pip install safetensors") from e
        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001 - any unreadable file is one user error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"cannot read safetensors file {str(p)!r}: {first}") from e
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user error
        why = _load_failure(e)
        raise WeightsError(f"cannot read checkpoint {str(p)!r} with torch.load(weights_only=True): {why}") from e


def _state_part(m: Mapping[Any, Any]) -> dict[str, Any]:
    """The tensors of a mapping, plus ``_extra_state`` entries (any value)."""
    return {str(k): v for k, v in m.items()
            if isinstance(v, torch.Tensor) or (isinstance(k, str) and k.rsplit(".", 1)[-1] == _EXTRA)}


def _candidates(obj: Any, where: str = "", depth: int = 0) -> list[_Candidate]:
    """Every state dict the checkpoint may hold: the file itself, then its wrapper entries, nested."""
    if not isinstance(obj, Mapping):
        return []
    out = []
    sd = _state_part(obj)
    if sd:
        out.append(_Candidate(where, sd))
    if depth < 3:
        for k in _WRAPPERS:
            if isinstance(obj.get(k), Mapping):
                out.extend(_candidates(obj[k], f"{where}[{k!r}]", depth + 1))
    return out


def _strippings(c: _Candidate) -> list[_Candidate]:
    """``c`` and the versions with a common wrapper prefix removed (``module.``, then ``module._orig_mod.``)."""
    out = [c]
    while True:
        last = out[-1]
        pre = next((p for p in _PREFIXES if all(k.startswith(p) for k in last.sd)), None)
        if pre is None:
            return out
        out.append(_Candidate(c.where, {k[len(pre):]: v for k, v in last.sd.items()}, last.stripped + pre))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict of a checkpoint, guessed without a model: the file itself or its first
    wrapper entry (``state_dict``, ``model``, ...), with a ``module.``/``_orig_mod.`` prefix stripped."""
    p = Path(path)
    obj = _read(p)
    cands = _candidates(obj)
    if not cands:
        raise WeightsError(
            f"checkpoint {str(p)!r} holds a {type(obj).__name__} without tensors, not a state dict; "
            "save model.state_dict()"
        )
    sd = cands[0].sd
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _fill_tied(sd: dict[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """Give a key the checkpoint left out its tied twin's tensor (safetensors drops shared tensors)."""
    by_id: dict[int, list[str]] = {}
    for k, v in own.items():
        if isinstance(v, torch.Tensor):
            by_id.setdefault(id(v), []).append(k)
    out = dict(sd)
    for names in by_id.values():
        have = next((k for k in names if k in sd), None)
        if have is not None:
            for k in names:
                out.setdefault(k, sd[have])
    return out


def _match(model: torch.nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's state dict whose keys are exactly the model's, or a :class:`WeightsError`."""
    obj = _read(Path(path))
    own = model.state_dict(keep_vars=True)
    cands = [s for c in _candidates(obj) for s in _strippings(c)]
    if not cands:
        raise WeightsError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__} without tensors, not a state dict; "
            "save model.state_dict()"
        )
    for c in cands:
        c.sd = _fill_tied(c.sd, own)
    want = set(own)
    matching = [c for c in cands if set(c.sd) == want]
    if not matching:  # report the closest one
        best = max(cands, key=lambda c: (len(want & set(c.sd)), -len(set(c.sd) - want)))
        missing = [k for k in own if k not in best.sd]
        unexpected = [k for k in best.sd if k not in own]
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        where = f" ({best.describe()})" if best.describe() else ""
        raise WeightsError(f"checkpoint {str(path)!r}{where} does not match the model ({'; '.join(parts)})")
    use = matching[0]
    if use.describe():
        others = [c.where for c in matching[1:] if c.where != use.where]
        also = f"; it also holds {', '.join(dict.fromkeys(others))}, not loaded" if others else ""
        warnings.warn(f"checkpoint {str(path)!r}: loaded {use.describe()}{also}", WeightsNote, stacklevel=3)
    return use.sd


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> torch.nn.Module:
    """A deep copy of ``model`` with the checkpoint at ``path`` loaded (all keys must match).

    Missing or unexpected keys and shape mismatches are a :class:`WeightsError` that
    lists them.  A model built on the ``meta`` device gets real tensors from the checkpoint.

    Raises
    ------
    WeightsError
        The file is missing or corrupt, ``weights_only`` loading refused pickled code (the
        refused global is named), or no entry of the checkpoint fits the model.
    """
    sd = _match(model, path)
    own = model.state_dict()
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own
           if isinstance(own[k], torch.Tensor) and isinstance(sd[k], torch.Tensor)
           and tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"checkpoint {str(path)!r} has tensors of the wrong shape: {_names(bad, 3)}")
    cp = copy.deepcopy(model)
    on_meta = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in own.values())
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
