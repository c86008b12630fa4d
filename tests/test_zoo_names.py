"""``torchvision:NAME`` (every family) and ``timm:NAME`` targets: names, default inputs, meta building."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import rfscope.loader
from rfscope.cli import main
from rfscope.loader import LoadedModel, LoadError, load_model

tvm = pytest.importorskip("torchvision.models")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["analyze", *args])


def as_json(res: Result) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.output)
    return out


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def one_line_error(res: Result) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    # progress notices ("rfscope: loading the model...", "...: done in 1.7 s") appear when a step is
    # slow, as on a loaded machine: the error itself is one line
    lines = [ln for ln in res.output.strip().splitlines()
             if not (ln.endswith("...") or re.search(r": done in [0-9.]+ s$", ln))]
    assert len(lines) == 1 and lines[0].startswith("rfscope: error:"), res.output
    return lines[0]


# -- every family resolves and analyses (on meta, small inputs) -----------------------------
@pytest.mark.parametrize("name,shape,params", [
    ("resnet18", "3,32,32", 11_689_512),
    ("lraspp_mobilenet_v3_large", "3,64,64", 3_221_538),
    ("r3d_18", "3,4,32,32", 33_371_472),
], ids=["classification", "segmentation", "video"])
def test_family_analyses(name: str, shape: str, params: int) -> None:
    d = as_json(run(f"torchvision:{name}", "--input-shape", shape, "--format", "json"))
    assert d["input_shape"] == [1, *map(int, shape.split(","))]
    assert d["summary"]["params_total"] == params


def test_optical_flow_takes_two_images_of_the_given_shape() -> None:
    d = as_json(run("torchvision:raft_small", "--input-shape", "3,128,128", "--format", "json"))
    assert d["input_shape"] == [1, 3, 128, 128]
    assert d["summary"]["params_total"] == 990_162
    lm = load_model("torchvision:raft_small", meta=True)
    shape, ex = lm.inputs((1, 3, 64, 96))
    assert ex is not None and [tuple(x.shape) for x in ex] == [(1, 3, 64, 96)] * 2
    assert all(x.device.type == "meta" for x in ex)


def test_detection_resolves_and_fails_in_one_line() -> None:
    lm = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", meta=True)
    assert lm.input_shape == (1, 3, 320, 320)
    assert lm.device == "cpu" and lm.note and "make_fx" in lm.note  # traced by running it: real weights
    # the data-dependent post-processing stops the analysis (issue 13 item 4), honestly and in one line
    line = one_line_error(run("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--trace", "export"))
    assert "data-dependent" in line


@pytest.mark.parametrize("name,shape,example_inputs", [
    ("resnet18", (1, 3, 224, 224), 0),
    ("inception_v3", (1, 3, 299, 299), 0),
    ("quantized_mobilenet_v2", (1, 3, 224, 224), 0),
    ("vit_h_14", (1, 3, 224, 224), 0),
    ("deeplabv3_mobilenet_v3_large", (1, 3, 520, 520), 0),
    ("mc3_18", (1, 3, 16, 112, 112), 0),
    ("s3d", (1, 3, 16, 224, 224), 0),
    ("raft_large", (1, 3, 224, 224), 2),
])
def test_default_inputs_per_family(name: str, shape: tuple[int, ...], example_inputs: int) -> None:
    lm = load_model(f"torchvision:{name}", meta=True)
    assert lm.input_shape == shape
    assert len(lm.example_inputs or ()) == example_inputs
    assert lm.device == "meta" and lm.note is None
    assert all(p.device.type == "meta" for p in lm.model.parameters())
    assert not lm.model.training


def test_every_torchvision_name_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """All families, every name: the builder's arguments are right (built on meta, no fallback to the
    CPU here: that takes gigabytes) and the family has a default input.  Only RegNets need the CPU."""
    no_meta: list[str] = []

    def meta_only(build: Any, what: str, meta: bool, why_real: str | None = None) -> Any:
        try:
            with torch.device("meta"):
                return build().eval(), "meta", None
        except Exception:  # noqa: BLE001
            no_meta.append(what)
            return torch.nn.Identity(), "cpu", "not on meta"

    monkeypatch.setattr(rfscope.loader, "_construct", meta_only)
    names = tvm.list_models()
    assert len(names) > 100
    # 320, with the transform resizing to the input's own size (RFs in input pixels); SSD300 its fixed 300
    detection = {"keypointrcnn_resnet50_fpn": 320, "ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320,
                 "fasterrcnn_mobilenet_v3_large_320_fpn": 320, "retinanet_resnet50_fpn": 320}
    for name in names:
        lm = load_model(f"torchvision:{name}", meta=True)
        assert lm.input_shape is not None and len(lm.input_shape) in (4, 5), name
        if name in detection:
            assert lm.input_shape == (1, 3, detection[name], detection[name]), name
    assert no_meta and all("regnet" in w for w in no_meta), no_meta


# -- meta building -----------------------------------------------------------------------
def _record_loads(monkeypatch: pytest.MonkeyPatch) -> list[LoadedModel]:
    seen: list[LoadedModel] = []
    real = rfscope.loader.load_model

    def recording(target: str, **kw: Any) -> LoadedModel:
        lm = real(target, **kw)
        seen.append(lm)
        return lm

    monkeypatch.setattr(rfscope.loader, "load_model", recording)
    return seen


def test_analyze_builds_on_meta_unless_weights_are_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_loads(monkeypatch)
    assert run("torchvision:resnet18", "--input-shape", "3,32,32").exit_code == 0
    assert seen[-1].device == "meta"
    assert all(p.device.type == "meta" for p in seen[-1].model.parameters())
    res = run("torchvision:resnet18", "--input-shape", "3,32,32", "--check-init")
    assert res.exit_code in (0, 1), res.output
    assert seen[-1].device == "cpu" and all(p.device.type == "cpu" for p in seen[-1].model.parameters())


def test_load_model_defaults_to_real_weights() -> None:
    lm = load_model("torchvision:resnet18")  # the probe and library callers need real weights
    assert lm.device == "cpu" and all(p.device.type == "cpu" for p in lm.model.parameters())


def test_regnet_falls_back_to_cpu_and_says_so_only_with_debug() -> None:
    lm = load_model("torchvision:regnet_x_400mf", meta=True)  # "Cannot copy out of meta tensor"
    assert lm.device == "cpu" and lm.note and "meta" in lm.note
    plain = run("torchvision:regnet_x_400mf", "--input-shape", "3,32,32")
    assert plain.exit_code == 0 and "note:" not in plain.output
    debug = run("torchvision:regnet_x_400mf", "--input-shape", "3,32,32", "--debug")
    assert debug.exit_code == 0 and "cannot be built on the meta device" in debug.output


# -- timm --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_on_meta(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    timm = pytest.importorskip("timm")
    seen = _record_loads(monkeypatch)
    d = as_json(run(f"timm:{name}", "--format", "json"))
    assert seen[-1].device == "meta" and all(p.device.type == "meta" for p in seen[-1].model.parameters())
    assert d["input_shape"] == [1, 3, 224, 224]  # the model's default input size
    assert d["summary"]["params_total"] == n_params(timm.create_model(name, pretrained=False))


def test_timm_tag_sets_the_input_size() -> None:
    pytest.importorskip("timm")
    lm = load_model("timm:resnet18.a1_in1k", meta=True)
    assert lm.device == "meta" and lm.input_shape == (1, 3, 224, 224)


def test_timm_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    line = one_line_error(run("timm:resnet18"))
    assert "pip install timm" in line


# -- names -------------------------------------------------------------------------------
@pytest.mark.parametrize("target,needle", [
    ("torchvision:resnet5O", "did you mean resnet50"),
    ("torchvision:ResNet50", "did you mean resnet50"),
    ("torchvision:fasterrcnn_mobilenet_v3", "did you mean fasterrcnn_mobilenet_v3_large"),
    ("torchvision:", "give a torchvision model name"),
    ("timm:resnet5O", "did you mean resnet50"),
    ("timm:vit_tiny_patch16", "did you mean vit_tiny_patch16_"),
    ("timm:resnet18.bogus", "has no tag 'bogus'"),
    ("timm:", "give a timm model name"),
])
def test_typos_suggest(target: str, needle: str) -> None:
    if target.startswith("timm:"):
        pytest.importorskip("timm")
    line = one_line_error(run(target))
    assert needle in line
    with pytest.raises(LoadError):
        load_model(target)
