"""A fast slice of the zoo sweep (``benchmarks/zoo.py``): its worker on a few tiny models, in-process,
and its process isolation (a hang is a ``timeout``, a dying child a ``crash``, the sweep goes on).

Parameter counts are compared with PyTorch's own count on a separately built copy of the model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ZOO_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo.py"


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("rfscope_bench_zoo", ZOO_PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _torch_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # PyTorch de-duplicates shared parameters itself


def _check_ok(rec: dict, expected_params: int) -> None:
    assert rec["status"] == "ok", rec.get("error")
    assert rec["params_torch"] == expected_params
    assert rec["params_rfscope"] == expected_params
    assert rec["params_match"] is True
    assert rec["build_device"] == "meta"
    assert rec["trace_path"] in ("symbolic_trace", "torch.export", "make_fx", "export")
    assert 0 < rec["nodes"] and 0 <= rec["unknown_nodes"] <= rec["nodes"]
    assert rec["output_status"] in ("exact", "global", "unknown", "none")
    assert rec["analyze_s"] >= 0 and rec["build_s"] >= 0
    json.dumps(rec)  # one JSON line


def test_torchvision_model(zoo):
    import torchvision

    rec = zoo.run_model("torchvision", "mobilenet_v3_small")
    _check_ok(rec, _torch_count(torchvision.models.mobilenet_v3_small()))
    assert rec["input"] == "(1,3,224,224)"
    assert rec["unknown_nodes"] == 0 and rec["output_status"] == "global"  # global average pooling


def test_timm_models(zoo):
    timm = pytest.importorskip("timm")
    rec = zoo.run_model("timm", "test_resnet")
    _check_ok(rec, _torch_count(timm.create_model("test_resnet", pretrained=False)))
    assert rec["input"] == "(1,3,160,160)"  # its pretrained_cfg input size, not a default 224

    rec = zoo.run_model("timm", "test_vit")
    _check_ok(rec, _torch_count(timm.create_model("test_vit", pretrained=False)))
    if rec["unknown_nodes"]:  # every unknown node is accounted for by a root reason
        assert rec["unknown_reasons"] and rec["first_unknown"]["category"] in rec["unknown_reasons"]


def test_monai_model(zoo):
    nets = pytest.importorskip("monai.networks.nets")
    kw, shape = zoo.MONAI_NETS["Classifier"]
    rec = zoo.run_model("monai", "Classifier")
    _check_ok(rec, _torch_count(nets.Classifier(**kw)))
    assert rec["input"] == "(" + ",".join(map(str, shape)) + ")"


def test_build_failure_is_recorded(zoo):
    rec = zoo.run_model("torchvision", "no_such_model")
    assert rec["status"] == "build-failed" and rec["error"]


def test_reason_category(zoo):
    cat = zoo.reason_category
    a = cat("positions along axis 0, 1 were concatenated or shuffled; only a global op is exact")
    b = cat("positions along axis 1 were concatenated or shuffled; only a global op is exact")
    assert a == b == "positions along axis N were concatenated or shuffled"
    assert cat("plugin 'shape' raised at node 'view_12' (Tensor.view): ValueError: x 3") == \
        cat("plugin 'shape' raised at node 'view_7' (Tensor.view): ValueError: y")
    # one category whichever tracer named the op
    assert cat("no plugin for torch.nn.functional.normalize") == "no plugin for F.normalize"
    assert cat("no plugin for Tensor.repeat") == cat("no plugin for aten.repeat.default") == "no plugin for repeat"
    assert cat("Tensor.view: reshape splits a spatial dimension (e.g. into windows or patches)") == \
        cat("aten.reshape.default: reshape splits a spatial dimension (e.g. into windows or patches)")
    assert cat("Conv1d: kernel 3 over a token axis of 196") == "Conv1d: kernel N over a token axis of N"


def test_sweep_isolates_hangs_and_deaths(zoo, tmp_path, monkeypatch):
    """A hanging model is killed at the time limit and a dying child is a crash; the others still run."""
    if sys.platform != "linux":
        pytest.skip("fork isolation")
    import os
    import time

    def build(name: str, device: str):
        if name == "hang":
            time.sleep(60)
        if name == "die":
            os._exit(3)
        return zoo.Built(torch.nn.Conv2d(1, 2, 3), {"input_shape": (1, 1, 8, 8)}, "(1,1,8,8)", device)

    monkeypatch.setitem(zoo.BUILDERS, "toy", build)
    monkeypatch.setitem(zoo._IMPORTS, "toy", ())
    specs = [zoo.Spec("toy", n) for n in ("hang", "die", "conv")] + [zoo.Spec("toy", "skip", skip="needs arguments")]
    out = tmp_path / "r.jsonl"
    zoo.sweep(specs, out, jobs=2, timeout=3.0, isolation="fork", log=lambda s: None)
    recs = {d["model"]: d for d in map(json.loads, out.read_text().splitlines())}
    assert recs["hang"]["status"] == "timeout" and recs["hang"]["phase"] == "build"
    assert recs["die"]["status"] == "crash" and "exit code 3" in recs["die"]["error"]
    assert recs["conv"]["status"] == "ok" and recs["conv"]["params_torch"] == 2 * 1 * 3 * 3 + 2
    assert recs["conv"]["output_status"] == "exact"
    assert recs["skip"]["status"] == "skipped"
