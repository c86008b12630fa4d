"""Concurrent analyses give exactly the sequential reports.

Several threads analyse different models, the same architecture (separate instances) and the
very same model object at once, on every trace path, with and without the init check; every
report's JSON must equal the one a sequential run gives, byte for byte, and no thread may raise.
torch.fx's symbolic tracer patches ``nn.Module`` process-wide, torch.export and make_fx keep
global tracing state (and torch.export's tracer answers other threads' submodule lookups when a
module is registered twice), and rfscope's own caches were once process-wide: any leak between
threads shows up here as a different report (other nodes, MACs, module map) or an exception.
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


class Shared(Small):
    """Registers one ReLU under two names (torch.export's tracer then proxies every submodule
    lookup, in every thread) and runs a multi-head attention leaf that has child modules."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.act2 = self.act
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.stem(x)))
        y = self.pool(y + self.act2(self.block(y)))
        s = y.flatten(2).transpose(1, 2)
        return self.head(self.mha(s, s, s)[0].mean(1))


def _jobs() -> list[tuple[str, Callable[[], str]]]:
    torch.manual_seed(0)
    r18, swin = tvm.resnet18(weights=None), tvm.swin_t(weights=None)
    mob, eff = tvm.mobilenet_v3_small(weights=None), tvm.efficientnet_b0(weights=None)
    r18b, swinb = tvm.resnet18(weights=None), tvm.swin_t(weights=None)
    small, shared, shared2 = Small(), Shared(), Shared()

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
        ("shared submodule, export", job(shared, (1, 3, 32, 32), trace="export")),
        ("shared submodule, export (same object)", job(shared, (1, 3, 32, 32), trace="export")),
        ("shared submodule, check_init", job(shared2, (1, 3, 32, 32), check_init=True)),
        ("shared submodule", job(shared2, (1, 3, 32, 32))),
    ]


def test_concurrent_reports_equal_sequential_ones() -> None:
    jobs = _jobs()
    reference = {name: fn() for name, fn in jobs}
    assert reference == {name: fn() for name, fn in jobs}  # the reports themselves are deterministic
    rounds = int(os.environ.get("RFSCOPE_THREAD_ROUNDS", "6"))
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


_ORIG_CALL = nn.Module.__call__
_WAIT = 2.0


class _Paused(Shared):
    """At the start of its traced forward, waits (at most ``_WAIT`` s) for ``events[0]`` when set."""

    events: tuple[threading.Event, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if nn.Module.__call__ is not _ORIG_CALL and _Paused.events is not None:  # fx patches it while tracing
            _Paused.events[1].set()
            _Paused.events[0].wait(_WAIT)
        return super().forward(x)


class _Waiter(nn.Module):
    """Signals ``events[0]``, then waits (at most ``_WAIT`` s) for ``events[1]`` when set."""

    events: tuple[threading.Event, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _Waiter.events is not None:
            _Waiter.events[0].set()
            _Waiter.events[1].wait(_WAIT)
        return x * 2


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.child = _Waiter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(self.conv(x))


def test_modules_run_in_other_threads_wait_for_torch_export() -> None:
    """While torch.export traces a model that registers a submodule twice, its tracer answers every
    thread's submodule lookups and pushes their calls on its own module stack.  A thread that runs
    a model then (here the graph cross-check, paused inside a submodule while the export goes on)
    must wait for the export instead: neither side's result may change."""
    from rfscope.trace.strategy import real_outputs

    paused, outer = _Paused(), _Outer()
    x = (torch.empty(1, 3, 32, 32, device="meta"),)
    reference = rfscope.analyze(paused, input_shape=(1, 3, 32, 32), trace="export").to_json()
    want = tuple(real_outputs(outer, x).shape)
    in_child, export_started, export_done = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def exporter() -> None:
        try:
            got["report"] = rfscope.analyze(paused, input_shape=(1, 3, 32, 32), trace="export").to_json()
        except Exception as e:  # noqa: BLE001 - compared below
            got["report"] = f"{type(e).__name__}: {e}"
        export_done.set()

    def runner() -> None:
        export_started.wait(10)
        try:
            got["out"] = tuple(real_outputs(outer, x).shape)
        except Exception as e:  # noqa: BLE001 - compared below
            got["out"] = f"{type(e).__name__}: {e}"

    _Paused.events = (in_child, export_started)  # the export waits until the runner is inside _Waiter
    _Waiter.events = (in_child, export_done)  # ... which waits until the export is done
    try:
        threads = [threading.Thread(target=exporter), threading.Thread(target=runner)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _Paused.events = _Waiter.events = None
    assert export_started.is_set() and in_child.is_set()
    assert got["report"] == reference
    assert got["out"] == want


def test_overlapping_rng_guards_leave_the_users_generator_where_it_was() -> None:
    """Two analyses whose model code draws random numbers overlap in two threads: when the last
    one ends, the global generator is back where the user left it (a per-call save/restore let
    the second thread restore the state the first had already moved)."""
    import threading

    from rfscope.trace.runtime import keep_rng_state

    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    drawn, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with keep_rng_state():
            torch.randn(100)  # the model's forward draws noise
            drawn.set()
            assert second_in.wait(10)
        first_out.set()

    def second() -> None:
        assert drawn.wait(10)
        with keep_rng_state():
            second_in.set()
            assert first_out.wait(10)
            torch.randn(7)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert torch.equal(torch.random.get_rng_state(), before)
