"""Concurrent analyses give exactly the sequential reports.

Several threads analyse different models, the same architecture (separate instances) and the
very same model object at once, on every trace path; every report's JSON must equal the one
a sequential run gives, byte for byte, and no thread may raise.  torch.fx's symbolic tracer
patches ``nn.Module`` process-wide, torch.export and make_fx keep global tracing state, and
rfscope's own caches were once process-wide: any leak between threads shows up here as a
different report (other nodes, MACs, module map) or an exception.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

import rfscope

tvm = pytest.importorskip("torchvision.models")

SHAPE = (1, 3, 224, 224)


class Small(nn.Module):
    """A small CNN with a residual merge, fast enough for the export and make_fx paths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = self.pool(y + self.block(y))
        return self.head(y.mean((2, 3)))


def _jobs() -> list[tuple[str, Callable[[], str]]]:
    torch.manual_seed(0)
    r18, swin = tvm.resnet18(weights=None), tvm.swin_t(weights=None)
    mob, eff = tvm.mobilenet_v3_small(weights=None), tvm.efficientnet_b0(weights=None)
    r18b, swinb = tvm.resnet18(weights=None), tvm.swin_t(weights=None)
    small = Small()

    def job(model: nn.Module, shape: tuple[int, ...] = SHAPE, **kw: Any) -> Callable[[], str]:
        return lambda: rfscope.analyze(model, input_shape=shape, **kw).to_json()

    return [
        ("resnet18", job(r18)),
        ("resnet18 (same object)", job(r18)),
        ("resnet18 (second instance)", job(r18b)),
        ("mobilenet_v3_small", job(mob)),
        ("swin_t", job(swin)),
        ("swin_t (second instance)", job(swinb)),
        ("efficientnet_b0", job(eff)),
        ("small, export", job(small, (1, 3, 32, 32), trace="export")),
        ("small, make_fx", job(small, (1, 3, 32, 32), trace="make_fx")),
        ("small, check_init", job(small, (1, 3, 32, 32), check_init=True)),
    ]


def test_concurrent_reports_equal_sequential_ones() -> None:
    jobs = _jobs()
    reference = {name: fn() for name, fn in jobs}
    assert reference == {name: fn() for name, fn in jobs}  # the reports themselves are deterministic
    rounds = int(os.environ.get("RFSCOPE_THREAD_ROUNDS", "4"))
    results: dict[str, list[str]] = {name: [] for name, _ in jobs}
    failures: list[str] = []
    start = threading.Barrier(len(jobs))

    def worker(name: str, fn: Callable[[], str]) -> None:
        start.wait()
        for _ in range(rounds):
            try:
                results[name].append(fn())
            except Exception as e:  # noqa: BLE001 - collected and reported below
                failures.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=worker, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    differ = [f"{name}: {sum(r != reference[name] for r in rs)} of {len(rs)} reports differ"
              for name, rs in results.items() if any(r != reference[name] for r in rs)]
    assert not failures and not differ, "\n".join(failures + differ)


def test_threads_sharing_a_registry_that_is_still_loading() -> None:
    """Threads that start on a fresh registry all wait until its plugins are loaded: none sees half
    of them (its ops would be "unsupported")."""
    model = Small()
    reference = rfscope.analyze(model, input_shape=(1, 3, 32, 32), registry=rfscope.Registry()).to_json()
    for _ in range(10):
        reg = rfscope.Registry()
        start = threading.Barrier(4)
        out: list[str] = []

        def worker(reg: rfscope.Registry = reg, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                out.append(rfscope.analyze(model, input_shape=(1, 3, 32, 32), registry=reg).to_json())
            except Exception as e:  # noqa: BLE001 - reported below
                out.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [reference] * 4
