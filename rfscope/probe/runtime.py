"""Device choice, torch.distributed sharing and a progress counter for the probes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["resolve_device", "dist_info", "all_reduce_sum", "Progress", "exact_kernels", "init_from_env"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    import os

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available; use --device auto or cpu")
    if dev.type == "cuda" and dev.index is None and dist_info()[1] > 1:  # torchrun: one GPU per local rank
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside an initialised process group (e.g. torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True if this call created it."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (no-op in a single process)."""
    import torch.distributed as dist

    if dist_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@contextmanager
def exact_kernels(device: torch.device) -> Iterator[None]:
    """Disable cuDNN (its FFT/Winograd kernels can turn exact zeros into rounding noise)."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


class Progress:
    """tqdm when installed, else a plain stderr counter; silent when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "img") -> None:
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
            except ImportError:
                self._bar = None

    def update(self, k: int) -> None:
        self.n += k
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(k)
        else:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)
