"""Zoo sweep: how much of the public model zoos rfscope analyses, and where it says ``unknown``.

Every model runs in its own child process with a time limit, so a crash, a hang or
a segfault in one model never stops the sweep.  The parent imports torch and the zoo
libraries once and forks one child per model (``--isolation fork``, the default on
Linux; ``spawn`` starts a fresh interpreter per model instead, slower but safer).

Run (always nice'd on a shared machine)::

    nice -n 19 python benchmarks/zoo.py run --zoo timm --sample per-module --jobs 1 --out zoo.jsonl
    nice -n 19 python benchmarks/zoo.py run --zoo torchvision --filter 'resnet*' --out zoo.jsonl --resume
    nice -n 19 python benchmarks/zoo.py run --zoo all --jobs 4 --timeout 300 --out zoo.jsonl
    python benchmarks/zoo.py summarize zoo.jsonl --title-from benchmarks/ZOO.md > ZOO.new  # keeps its notes
    python benchmarks/zoo.py list --zoo monai          # what would run, with each model's input

Zoos (``--zoo``, comma-separated or ``all``):

* ``timm``: every ``timm.list_models()`` name, ``pretrained=False``, built on the ``meta`` device
  (CPU when meta construction fails), at ``resolve_data_config`` input size.
* ``torchvision``: every ``torchvision.models.list_models()`` name of every family
  (classification, detection, segmentation, video, optical flow, quantization), random
  weights, each family's natural input (video 16-frame clips, optical flow two images,
  detection a list of one 3-D 320x320 image, built on the CPU with the transform resizing to 320;
  SSD300 at its fixed 300).
* ``monai``: the networks of ``monai.networks.nets`` in :data:`MONAI_NETS` (constructor
  arguments and input per net); the other classes are recorded as ``skipped``.
* ``hf``: a handful of Hugging Face transformers vision and audio models from their
  default configs (:data:`HF_MODELS`).

Each result is one JSON line (``run`` appends, ``--resume`` skips models already in the
file; a line with ``"kind": "run"`` records each invocation's command, date and versions):

==================  =====================================================================
``zoo``, ``model``  where the model comes from and its name
``status``          ``ok`` (analyze returned), ``crash`` (analyze raised, or the child died:
                    ``error`` says which), ``timeout`` (killed after ``--timeout`` s;
                    ``phase`` says whether it hung building or analysing),
                    ``build-failed`` (the zoo could not build the model: not rfscope's
                    fault), ``skipped`` (e.g. a MONAI class that needs arguments)
``error``           first line of the exception (``error_type`` its class)
``build_device``    ``meta`` or ``cpu`` (meta construction failed: ``meta_error``).  A
                    model built on meta whose analysis crashes is retried once on CPU
                    (up to 400 M parameters): ``cpu_retry`` is set and ``meta_error`` holds
                    the meta crash
``input``           the input given to analyze (shapes)
``trace_path``      ``report.trace_path``: symbolic_trace, export or make_fx
``nodes``           nodes with an input-dependent tensor value (``report.layers()``)
``unknown_nodes``   those whose RF status is ``unknown`` (including the ones that only
                    inherit an unknown input)
``unknown_reasons`` ``{category: n}`` over the *root* unknown nodes (whose reason none of
                    their inputs already had); categories are normalised by
                    :func:`reason_category` (node names, numbers and shapes stripped)
``first_unknown``   the first unknown node in graph order, its op and reason category
                    and the raw reason: what stops the model first
``output_status``   ``report.rf("output").status`` (``none``: no output depends on the
                    input); ``output_reason`` its category when unknown
``params_rfscope``  ``report.summary.params_total``; ``params_torch`` the sum of
                    ``numel`` over the model's parameters de-duplicated by identity;
                    ``params_match`` whether they are equal
``macs``            ``report.summary.macs`` (a lower bound when ``macs_unknown`` > 0)
``build_s``         model construction time; ``analyze_s`` wall time of ``rfscope.analyze``;
                    ``wall_s`` the child's whole life, fork and imports included
==================  =====================================================================

The markdown from ``summarize`` has, per zoo: the share analysed (no crash, no
timeout, out of the models that built), the models with any unknown node, the output
status distribution, the unknown-reason histogram (how many models each reason
stops), time per model (median, p90, max) and a list of every model with unknown
nodes or a crash, with its first reason.  It extrapolates the time of a full sweep
from the mean wall time per model when the zoo libraries are importable.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("rfscope") is None:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

ZOOS = ("timm", "torchvision", "monai", "hf")

# ----------------------------------------------------------------------------- model specs


@dataclass(frozen=True)
class Spec:
    """One model of a zoo: enough to build it again in a child process (``zoo`` and ``name``)."""

    zoo: str
    name: str
    #: why the model is not run (``None``: it is run)
    skip: str | None = None
    #: extra information shown by ``list`` (family, module)
    group: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.zoo, self.name)


@dataclass
class Built:
    """A constructed model and the arguments that analyse it."""

    model: Any
    analyze_kwargs: dict[str, Any]
    input_desc: str
    device: str = "meta"
    meta_error: str | None = None


def _first_line(e: BaseException | str, limit: int = 300) -> str:
    s = str(e).strip() if not isinstance(e, str) else e.strip()
    line = s.splitlines()[0] if s else ""
    if not line and isinstance(e, BaseException):
        line = type(e).__name__
    return line[:limit]


def _desc(x: Any) -> str:
    """Short description of an analyze input: shapes and dtypes, nested."""
    import torch

    if isinstance(x, torch.Tensor):
        dt = "" if x.dtype == torch.float32 else f":{str(x.dtype).replace('torch.', '')}"
        return "(" + ",".join(str(s) for s in x.shape) + ")" + dt
    if isinstance(x, (list, tuple)):
        inner = ", ".join(_desc(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    return type(x).__name__


def _on_device(model_fn: Callable[[], Any], inputs_fn: Callable[[Any], dict[str, Any]], device: str) -> Built:
    """Build on ``device``: ``meta`` falls back to CPU when the constructor fails there."""
    import torch

    meta_error = None
    if device == "meta":
        try:
            with torch.device("meta"):
                model = model_fn()
        except Exception as e:  # noqa: BLE001 - any constructor failure means: try CPU
            meta_error = f"{type(e).__name__}: {_first_line(e)}"
            device = "cpu"
    if device != "meta":
        model = model_fn()
    kwargs = inputs_fn(model)
    desc = _desc(kwargs["example_inputs"]) if "example_inputs" in kwargs else _desc_shape(kwargs["input_shape"])
    return Built(model.eval(), kwargs, desc, device, meta_error)


def _desc_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


# -- timm ---------------------------------------------------------------------------------


def _per_module(sample: str | None) -> int | None:
    """``per-module`` -> 1, ``per-module:2`` -> 2, anything else -> ``None`` (no sampling)."""
    if not sample or not sample.startswith("per-module"):
        return None
    _, _, n = sample.partition(":")
    return int(n) if n else 1


def timm_specs(sample: str | None) -> list[Spec]:
    import timm

    k = _per_module(sample)
    if k:  # the first k models of each timm module
        return [Spec("timm", n, group=mod) for mod in sorted(timm.list_modules())
                for n in timm.list_models(module=mod)[:k]]
    return [Spec("timm", n) for n in timm.list_models()]


def timm_build(name: str, device: str) -> Built:
    import timm
    import timm.data

    def make() -> Any:
        return timm.create_model(name, pretrained=False)

    def inputs(model: Any) -> dict[str, Any]:
        size = timm.data.resolve_data_config({}, model=model)["input_size"]
        return {"input_shape": (1, *size)}

    return _on_device(make, inputs, device)


# -- torchvision --------------------------------------------------------------------------

_TV_FAMILIES = ("", "detection", "segmentation", "video", "optical_flow", "quantization")


def torchvision_specs(sample: str | None) -> list[Spec]:
    import torchvision.models as tvm

    out: list[Spec] = []
    for fam in _TV_FAMILIES:
        module = getattr(tvm, fam) if fam else tvm
        names = sorted(tvm.list_models(module=module))
        k = _per_module(sample)
        if k:
            names = names[:k]
        out.extend(Spec("torchvision", n, group=fam or "classification") for n in names)
    return out


def _tv_family(name: str) -> str:
    import torchvision.models as tvm

    mod = tvm.get_model_builder(name).__module__  # torchvision.models[.family].file
    parts = mod.split(".")
    return parts[2] if len(parts) > 3 else "classification"


def torchvision_build(name: str, device: str) -> Built:
    import torch
    import torchvision.models as tvm

    fam = _tv_family(name)
    kw: dict[str, Any] = {"weights": None}
    if fam in ("detection", "segmentation"):
        kw["weights_backbone"] = None
    if fam == "quantization":
        kw["quantize"] = False  # the float, quantisation-ready model (quantize=True needs real weights)
    builder = tvm.get_model_builder(name)

    def make() -> Any:
        model = builder(**kw)
        t = getattr(model, "transform", None)
        if fam == "detection" and t is not None and not getattr(t, "fixed_size", None):
            t.min_size, t.max_size = (320,), 320  # resize to the input's own size (scale 1), as rfscope's loader
        return model

    def inputs(model: Any) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        if fam == "detection":  # a list of 3-D images; SSD300 at its fixed 300
            fixed = getattr(getattr(model, "transform", None), "fixed_size", None)
            s = int(fixed[0]) if fixed else 320
            return {"example_inputs": ([torch.rand(3, s, s, generator=g)],)}
        if fam == "optical_flow":
            return {"example_inputs": (torch.rand(1, 3, 224, 224, generator=g),
                                       torch.rand(1, 3, 224, 224, generator=g))}
        if fam == "video":
            return {"input_shape": (1, 3, 16, 112, 112) if name.startswith(("r3d", "mc3", "r2plus1d"))
                    else (1, 3, 16, 224, 224)}
        if fam == "segmentation":
            return {"input_shape": (1, 3, 520, 520)}
        size = 299 if "inception_v3" in name else 224
        return {"input_shape": (1, 3, size, size)}

    # a detector is traced by running it (make_fx, on its data-dependent parts): real weights
    return _on_device(make, inputs, "cpu" if fam == "detection" else device)


# -- MONAI --------------------------------------------------------------------------------

_S3 = (1, 1, 96, 96, 96)
_S3_64 = (1, 1, 64, 64, 64)
_S2 = (1, 3, 224, 224)
_SEG3 = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}

#: MONAI network -> (constructor kwargs, input shape); a shape with fewer than 3 dims, or a
#: tuple of shapes, is passed as example_inputs.  Every other class of monai.networks.nets is
#: recorded as "skipped" (a building block, or a net that needs arguments or inputs of its own).
MONAI_NETS: dict[str, tuple[dict[str, Any], Any]] = {
    "BasicUNet": (_SEG3, _S3),
    "BasicUNetPlusPlus": (_SEG3, _S3),
    "UNet": ({**_SEG3, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}, _S3),
    "AttentionUnet": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (16, 32, 64, 128),
                       "strides": (2, 2, 2)}, (1, 1, 128, 128)),
    "SwinUNETR": ({"in_channels": 1, "out_channels": 2, "feature_size": 24}, _S3),
    "HyenaNDUNETR": ({"in_channels": 1, "out_channels": 2, "hyena_stages": (False, False, True, True)}, _S3),
    "UNETR": ({"in_channels": 1, "out_channels": 2, "img_size": (96, 96, 96)}, _S3),
    "VNet": (_SEG3, _S3_64),
    "SegResNet": (_SEG3, _S3),
    "SegResNetDS": (_SEG3, _S3),
    "SegResNetDS2": (_SEG3, _S3),
    "SegResNetVAE": ({**_SEG3, "input_image_size": (96, 96, 96)}, _S3),
    "DynUNet": ({**_SEG3, "kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2],
                 "upsample_kernel_size": [2, 2, 2]}, _S3),
    "MedNeXt": (_SEG3, _S3_64),
    "HighResNet": (_SEG3, _S3_64),
    "AHNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2}, (1, 1, 128, 128, 64)),
    "DAF3D": ({"in_channels": 1, "out_channels": 2}, _S3_64),
    "DenseNet121": ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2}, _S2),
    "DenseNet169": ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2}, _S2),
    "DenseNet201": ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2}, _S2),
    "DenseNet264": ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2}, _S2),
    "ResNet": ({"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512],
                "spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}, _S3_64),
    "ResNetEncoder": ({"model_name": "resnet10", "pretrained": False, "spatial_dims": 3, "in_channels": 1},
                      _S3_64),
    "ResNetFeatures": ({"model_name": "resnet10", "pretrained": False, "spatial_dims": 3, "in_channels": 1},
                       _S3_64),
    "EfficientNetBN": ({"model_name": "efficientnet-b0", "pretrained": False, "spatial_dims": 2,
                        "in_channels": 3, "num_classes": 2}, _S2),
    "EfficientNetBNFeatures": ({"model_name": "efficientnet-b0", "pretrained": False, "spatial_dims": 2,
                                "in_channels": 3, "num_classes": 2}, _S2),
    "FlexibleUNet": ({"in_channels": 3, "out_channels": 2, "backbone": "efficientnet-b0", "pretrained": False,
                      "spatial_dims": 2}, _S2),
    "SENet154": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "SEResNet50": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "SEResNet101": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "SEResNet152": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "SEResNext50": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "SEResNext101": ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "pretrained": False}, _S2),
    "MILModel": ({"num_classes": 2, "pretrained": False}, (1, 4, 3, 224, 224)),
    "TorchVisionFCModel": ({"model_name": "resnet18", "num_classes": 2, "pretrained": False}, _S2),
    "ViT": ({"in_channels": 1, "img_size": 96, "patch_size": 16, "spatial_dims": 3}, _S3),
    "ViTAutoEnc": ({"in_channels": 1, "img_size": 96, "patch_size": 16, "spatial_dims": 3}, _S3),
    "MaskedAutoEncoderViT": ({"in_channels": 1, "img_size": 96, "patch_size": 16, "spatial_dims": 3}, _S3),
    "AutoEncoder": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (4, 8, 16),
                     "strides": (2, 2, 2)}, (1, 1, 64, 64)),
    "VarAutoEncoder": ({"spatial_dims": 2, "in_shape": (1, 64, 64), "out_channels": 1, "latent_size": 2,
                        "channels": (4, 8, 16), "strides": (2, 2, 2)}, (1, 1, 64, 64)),
    "AutoencoderKL": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (32, 64, 64),
                       "attention_levels": (False, False, True), "num_res_blocks": 1}, (1, 1, 64, 64)),
    "VQVAE": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1}, (1, 1, 64, 64)),
    "Classifier": ({"in_shape": (1, 64, 64), "classes": 2, "channels": (8, 16), "strides": (2, 2)},
                   (1, 1, 64, 64)),
    "Critic": ({"in_shape": (1, 64, 64), "channels": (8, 16), "strides": (2, 2)}, (1, 1, 64, 64)),
    "Discriminator": ({"in_shape": (1, 64, 64), "channels": (8, 16), "strides": (2, 2)}, (1, 1, 64, 64)),
    "Regressor": ({"in_shape": (1, 64, 64), "out_shape": (2,), "channels": (8, 16), "strides": (2, 2)},
                  (1, 1, 64, 64)),
    "PatchDiscriminator": ({"spatial_dims": 2, "channels": 8, "in_channels": 1}, (1, 1, 64, 64)),
    "MultiScalePatchDiscriminator": ({"num_d": 2, "num_layers_d": 3, "spatial_dims": 2, "channels": 8,
                                      "in_channels": 1}, (1, 1, 256, 256)),
    "HoVerNet": ({}, (1, 3, 256, 256)),
    "Quicknat": ({}, (1, 1, 256, 256)),
    "GlobalNet": ({"image_size": [64, 64, 64], "spatial_dims": 3, "in_channels": 2, "num_channel_initial": 16,
                   "depth": 3}, (1, 2, 64, 64, 64)),
    "LocalNet": ({"spatial_dims": 3, "in_channels": 2, "num_channel_initial": 16, "extract_levels": (0, 1, 2, 3)},
                 (1, 2, 64, 64, 64)),
    "RegUNet": ({"spatial_dims": 3, "in_channels": 2, "num_channel_initial": 16, "depth": 3},
                (1, 2, 64, 64, 64)),
    "VoxelMorphUNet": ({"spatial_dims": 3, "in_channels": 2, "unet_out_channels": 32,
                        "channels": (16, 32, 32, 32, 32, 32), "final_conv_channels": (16, 16)},
                       (1, 2, 64, 64, 64)),
    "VoxelMorph": ({}, ((1, 1, 64, 64, 64), (1, 1, 64, 64, 64))),
    "FullyConnectedNet": ({"in_channels": 10, "out_channels": 2, "hidden_channels": [16, 16]}, (1, 10)),
    "Generator": ({"latent_shape": (64,), "start_shape": (8, 8, 8), "channels": (8, 1), "strides": (2, 2)},
                  (1, 64)),
    "DecoderOnlyTransformer": ({"num_tokens": 10, "max_seq_len": 16, "attn_layers_dim": 8, "attn_layers_depth": 2,
                                "attn_layers_heads": 2}, ((1, 16), "tokens")),
    "DenseNet": ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "init_features": 16, "growth_rate": 8,
                  "block_config": (2, 2, 2)}, (1, 3, 64, 64)),
    "SENet": ({"spatial_dims": 2, "in_channels": 3, "block": "se_bottleneck", "layers": (1, 1, 1, 1), "groups": 1,
               "reduction": 16, "num_classes": 2, "inplanes": 64, "downsample_kernel_size": 1, "input_3x3": False},
              (1, 3, 64, 64)),
    "EfficientNet": ({"blocks_args_str": ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25"],
                      "spatial_dims": 2, "in_channels": 3, "num_classes": 2}, (1, 3, 64, 64)),
    "NetAdapter": ({"num_classes": 2}, _S2),  # model= a torchvision resnet18, made in monai_build
    "VarFullyConnectedNet": ({"in_channels": 10, "out_channels": 2, "latent_size": 2, "encode_channels": (16,),
                              "decode_channels": (16,)}, (1, 10)),
    "DiffusionModelUNet": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (32, 64, 64),
                            "attention_levels": (False, True, True), "num_res_blocks": 1,
                            "num_head_channels": 32}, ((1, 1, 64, 64), "timesteps")),
}

#: classes of monai.networks.nets that are parts of networks, not networks
MONAI_BLOCKS = {"BertAttention", "BertMixedLayer", "BertOutput", "BertPreTrainedModel", "HighResBlock", "PatchMerging",
                "PatchMergingV2", "Pooler", "ResNetBlock", "ResNetBottleneck", "TopologyConstruction",
                "TopologyInstance", "TopologySearch", "EfficientNetEncoder"}


def monai_specs(sample: str | None) -> list[Spec]:
    import inspect

    import monai.networks.nets as nets
    import torch

    seen: dict[type, str] = {}
    for attr in sorted(dir(nets)):
        obj = getattr(nets, attr)
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj not in seen:
            seen[obj] = attr
    out = []
    for cls, attr in seen.items():
        name = cls.__name__ if getattr(nets, cls.__name__, None) is cls else attr  # canonical, not an alias
        skip = None if name in MONAI_NETS else (
            "a building block, not a network" if name in MONAI_BLOCKS else "needs arguments or inputs of its own")
        out.append(Spec("monai", name, skip=skip))
    return sorted(out, key=lambda s: (s.skip is not None, s.name))


def monai_build(name: str, device: str) -> Built:
    import monai.networks.nets as nets
    import torch

    kw, shape = MONAI_NETS[name]
    cls = getattr(nets, name)

    def make() -> Any:
        if name == "NetAdapter":
            import torchvision

            return cls(model=torchvision.models.resnet18(), **kw)
        return cls(**kw)

    def inputs(model: Any) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        if name == "DiffusionModelUNet":  # an image and a diffusion time step
            return {"example_inputs": (torch.rand(*shape[0], generator=g), torch.tensor([10]))}
        if name == "DecoderOnlyTransformer":  # token ids
            return {"example_inputs": (torch.randint(0, 10, shape[0], generator=g),)}
        if isinstance(shape[0], tuple):
            return {"example_inputs": tuple(torch.rand(*s, generator=g) for s in shape)}
        if len(shape) < 3:
            return {"example_inputs": (torch.rand(*shape, generator=g),)}
        return {"input_shape": shape}

    return _on_device(make, inputs, device)


# -- Hugging Face transformers -----------------------------------------------------------

#: model class -> (config class, input shape or tuple of shapes; 2-D shapes are example_inputs)
HF_MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "ViTModel": ("ViTConfig", (1, 3, 224, 224)),
    "DeiTModel": ("DeiTConfig", (1, 3, 224, 224)),
    "BeitModel": ("BeitConfig", (1, 3, 224, 224)),
    "Dinov2Model": ("Dinov2Config", (1, 3, 224, 224)),
    "SwinModel": ("SwinConfig", (1, 3, 224, 224)),
    "ConvNextModel": ("ConvNextConfig", (1, 3, 224, 224)),
    "ResNetModel": ("ResNetConfig", (1, 3, 224, 224)),
    "MobileViTModel": ("MobileViTConfig", (1, 3, 256, 256)),
    "SegformerModel": ("SegformerConfig", (1, 3, 512, 512)),
    "CLIPVisionModel": ("CLIPVisionConfig", (1, 3, 224, 224)),
    "Wav2Vec2Model": ("Wav2Vec2Config", (1, 16000)),
    "HubertModel": ("HubertConfig", (1, 16000)),
    "WavLMModel": ("WavLMConfig", (1, 16000)),
    "WhisperEncoder": ("WhisperConfig", (1, 80, 3000)),
    "ASTModel": ("ASTConfig", (1, 1024, 128)),
}


def hf_specs(sample: str | None) -> list[Spec]:
    return [Spec("hf", n) for n in HF_MODELS]


def hf_build(name: str, device: str) -> Built:
    import torch
    import transformers

    cfg_name, shape = HF_MODELS[name]
    config = getattr(transformers, cfg_name)()
    cls: Any
    if name == "WhisperEncoder":  # the encoder alone: Whisper's decoder needs decoder_input_ids
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cls = WhisperEncoder
    else:
        cls = getattr(transformers, name)

    def make() -> Any:
        return cls(config)

    def inputs(model: Any) -> dict[str, Any]:
        if len(shape) < 3 or name in ("ASTModel",):  # (N, T) waveforms, (N, frames, mel) spectrograms
            return {"example_inputs": (torch.rand(*shape, generator=torch.Generator().manual_seed(0)),)}
        return {"input_shape": shape}

    return _on_device(make, inputs, device)


SPECS: dict[str, Callable[[str | None], list[Spec]]] = {
    "timm": timm_specs, "torchvision": torchvision_specs, "monai": monai_specs, "hf": hf_specs,
}
BUILDERS: dict[str, Callable[[str, str], Built]] = {
    "timm": timm_build, "torchvision": torchvision_build, "monai": monai_build, "hf": hf_build,
}
_IMPORTS = {"timm": ("timm", "timm.data"), "torchvision": ("torchvision",), "monai": ("monai.networks.nets",),
            "hf": ("transformers",)}

# ----------------------------------------------------------------------------- reasons

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUM = re.compile(r"(?<![A-Za-z_\d.])-?\d+(\.\d+)?(?![A-Za-z_\d])")
_TUPLE = re.compile(r"[\(\[]\s*N(\s*,\s*N)*\s*,?\s*[\)\]]")
_PLUGIN_RAISED = re.compile(r"plugin '([^']*)' raised at node '[^']*' \(([^)]*)\): (\w+)")


def op_name(target: str) -> str:
    """One name for an op whichever tracer produced it: ``aten.view.default``, ``Tensor.view`` -> ``view``,
    ``torch.nn.functional.normalize`` -> ``F.normalize``, ``torch.cat`` -> ``cat``."""
    t = target
    m = re.fullmatch(r"(?:torch\.ops\.)?aten\.(\w+)(?:\.\w+)?", t)
    if m:
        return m.group(1).rstrip("_") if m.group(1) not in ("add_", "mul_") else m.group(1)
    for prefix, repl in (("torch.nn.functional.", "F."), ("torch.Tensor.", ""), ("Tensor.", ""),
                         ("torch._C._nn.", ""), ("torch.", ""), ("_operator.", ""), ("operator.", "")):
        if t.startswith(prefix):
            return repl + t[len(prefix):]
    return t


_OP = re.compile(r"(?:torch\.ops\.)?aten\.\w+(?:\.\w+)?|torch\.nn\.functional\.\w+|(?:torch\.)?Tensor\.\w+"
                 r"|torch\.\w+|_?operator\.\w+")
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "_unsafe_view", "view_copy"}


def reason_category(reason: str | None) -> str:
    """A short, model-independent category for an unknown reason.

    Node names (``node 'add_3'``, ``add_16``), numbers and shapes are stripped; op names are
    made tracer-independent (:func:`op_name`); the op and the message's key phrase are kept
    (the text before the first ``;``):

    >>> reason_category("positions along axis 0, 1 were concatenated or shuffled; only a global op is exact")
    'positions along axis N were concatenated or shuffled'
    >>> reason_category("plugin 'shape' raised at node 'view_3' (Tensor.view): ValueError: bad")
    'plugin shape raised on view: ValueError'
    >>> reason_category("aten.view.default: aten.view.default: reshape splits a spatial dimension")
    'reshape: reshape splits a spatial dimension'
    """
    if not reason:
        return "(no reason given)"
    r = " ".join(reason.split())
    m = _PLUGIN_RAISED.match(r)
    if m:
        return f"plugin {m.group(1)} raised on {op_name(m.group(2))}: {m.group(3)}"
    r = _OP.sub(lambda o: op_name(o.group(0)), r)
    if r.startswith("no plugin for "):
        return r[:120]
    r = r.split("; ")[0]
    r = re.sub(r"\b(node|layer|module)\s+'[^']*'", r"\1", r)
    r = re.sub(r"\b([A-Za-z]+)_\d+\b", r"\1", r)  # fx node names: add_16 -> add
    r = _QUOTED.sub(lambda q: q.group(0) if len(q.group(0)) <= 40 and "_" not in q.group(0)[1:-1]
                    or "." in q.group(0) else "'…'", r)
    r = _NUM.sub("N", r)
    r = _TUPLE.sub("(…)", r)
    r = re.sub(r"N(\s*,\s*N)+", "N", r)
    r = re.sub(r"\s+", " ", r).strip(" :,.")
    parts = r.split(": ")
    while len(parts) > 1 and parts[0] == parts[1]:  # "view: view: reshape ..." -> "view: reshape ..."
        parts.pop(0)
    if len(parts) > 1 and parts[0] in _RESHAPES:  # view and reshape are one category
        parts[0] = "reshape"
    return ": ".join(parts)[:140]


# ----------------------------------------------------------------------------- the worker


def _states(st: Any) -> Iterator[Any]:
    from rfscope.core.state import TensorRF

    if isinstance(st, TensorRF):
        yield st
    elif isinstance(st, (tuple, list)):
        for s in st:
            yield from _states(s)


def _why(st: Any) -> str | None:
    return next((s.why for s in _states(st) if s.status == "unknown"), None)


def torch_param_count(model: Any) -> int:
    """PyTorch's own count: every parameter once, however many modules share it."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


def describe_report(report: Any) -> dict[str, Any]:
    """The result fields that come from an rfscope report (see the module docstring)."""
    layers = report.layers()
    unknown = [r for r in layers if _why(r.state) is not None]
    whys = {r.name: _why(r.state) for r in report.records.values()}
    # roots over every node, not only the table's layers: a module returning a tuple (nn.LSTM) is
    # not a layer, but it is where the reason starts
    roots = [r for r in report.records.values() if r.op != "output" and whys[r.name] is not None
             and not any(whys.get(i) == whys[r.name] for i in r.inputs)]
    cats: Counter[str] = Counter(reason_category(whys[r.name]) for r in roots)
    out: dict[str, Any] = {
        "trace_path": report.trace_path,
        "nodes": len(layers),
        "unknown_nodes": len(unknown),
        "unknown_reasons": dict(cats.most_common()),
    }
    if roots:
        first = roots[0]
        out["first_unknown"] = {"node": first.name, "op": first.target,
                                "category": reason_category(whys[first.name]),
                                "reason": (whys[first.name] or "")[:300]}
    try:
        rf = report.rf("output")
        out["output_status"] = rf.status
        if rf.status == "unknown":
            out["output_reason"] = reason_category(rf.reason)
    except (ValueError, KeyError) as e:
        out["output_status"] = "none"
        out["output_reason"] = _first_line(e)
    return out


def _analyze(built: Built) -> tuple[Any, float]:
    import rfscope

    t0 = time.perf_counter()
    report = rfscope.analyze(built.model, **built.analyze_kwargs)
    return report, time.perf_counter() - t0


#: a model built on meta whose analysis crashes is rebuilt on CPU and analysed again, up to this size
CPU_RETRY_MAX_PARAMS = 400_000_000


def run_model(zoo: str, name: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build one model and analyse it, in this process; the JSON-ready result record.

    Never raises for a model's failure: the record's ``status`` says what happened.
    ``progress`` is told each phase (``build``, ``analyze``) as it starts.
    """
    import torch

    say = progress or (lambda _phase: None)
    rec: dict[str, Any] = {"zoo": zoo, "model": name}
    build = BUILDERS[zoo]
    say("build")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        built = build(name, "meta")
    except Exception as e:  # noqa: BLE001 - the zoo could not build it: record, never raise
        rec.update(status="build-failed", error=f"{type(e).__name__}: {_first_line(e)}",
                   error_type=type(e).__name__, build_s=round(time.perf_counter() - t0, 3))
        return rec
    rec["build_s"] = round(time.perf_counter() - t0, 3)
    say("analyze")
    try:
        report, dt = _analyze(built)
    except Exception as e:  # noqa: BLE001
        if built.device != "meta" or type(e).__name__ == "AnalysisInputError" \
                or torch_param_count(built.model) > CPU_RETRY_MAX_PARAMS:
            raise_into(rec, e, built)
            return rec
        meta_error = f"{type(e).__name__}: {_first_line(e)}"
        say("build")  # the meta model may be what failed: one retry on a CPU-built model
        t0 = time.perf_counter()
        try:
            built = build(name, "cpu")
        except Exception as e2:  # noqa: BLE001
            raise_into(rec, e, None)
            rec["cpu_build_error"] = f"{type(e2).__name__}: {_first_line(e2)}"
            return rec
        built.meta_error = meta_error
        rec["cpu_retry"] = True
        rec["build_s"] = round(rec["build_s"] + time.perf_counter() - t0, 3)
        say("analyze")
        try:
            report, dt = _analyze(built)
        except Exception as e2:  # noqa: BLE001
            raise_into(rec, e2, built)
            return rec
    rec.update(status="ok", build_device=built.device, input=built.input_desc)
    if built.meta_error:
        rec["meta_error"] = built.meta_error
    rec.update(describe_report(report))
    ours, theirs = int(report.summary.params_total), torch_param_count(built.model)
    rec.update(params_rfscope=ours, params_torch=theirs, params_match=ours == theirs,
               macs=int(report.summary.macs), macs_unknown=len(report.summary.macs_unknown),
               analyze_s=round(dt, 3))
    if report.errors:
        rec["plugin_errors"] = len(report.errors)
    return rec


def raise_into(rec: dict[str, Any], e: BaseException, built: Built | None) -> None:
    """Fill ``rec`` for an analysis that raised."""
    rec.update(status="crash", error=f"{type(e).__name__}: {_first_line(e)}", error_type=type(e).__name__)
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if "/rfscope/" in f.filename or "/plugins/" in f.filename]
    where = (ours or tb)[-1] if tb else None
    if where is not None:
        rec["error_where"] = f"{Path(where.filename).name}:{where.lineno} {where.name}"
    if built is not None:
        rec.update(build_device=built.device, input=built.input_desc)
        if built.meta_error:
            rec["meta_error"] = built.meta_error


# ----------------------------------------------------------------------------- the sweep


def _child(zoo: str, name: str, conn: Any, log_path: str) -> None:
    """Child process body: quiet stdout/stderr into ``log_path``, run the model, send the record."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    for mod in _IMPORTS[zoo]:  # spawn children import here; forked ones already have them
        __import__(mod)

    def phase(p: str) -> None:
        conn.send(("phase", p, time.time()))

    conn.send(("result", run_model(zoo, name, phase)))
    conn.close()


@dataclass
class _Running:
    spec: Spec
    proc: Any
    conn: Any
    log: str
    start: float
    phase: str = "start"
    result: dict[str, Any] | None = None


def _tail(path: str, n: int = 3) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def sweep(specs: Sequence[Spec], out: Path, jobs: int, timeout: float, isolation: str,
          log: Callable[[str], None]) -> None:
    """Run every spec in its own child process, ``jobs`` at a time, appending records to ``out``."""
    import multiprocessing as mp

    ctx: Any = mp.get_context(isolation)
    todo = list(specs)
    total = len(todo)
    done = 0
    running: list[_Running] = []
    tmp = tempfile.mkdtemp(prefix="rfscope-zoo-")
    with out.open("a") as fh:
        def finish(r: _Running, rec: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            rec["wall_s"] = round(time.time() - r.start, 3)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            unk = f" unknown {rec.get('unknown_nodes')}/{rec.get('nodes')} out={rec.get('output_status')}" \
                if rec["status"] == "ok" else f" {rec.get('error', '')[:100]}"
            log(f"[{done}/{total}] {r.spec.zoo} {r.spec.name}: {rec['status']} {rec['wall_s']:.1f}s{unk}")
            with contextlib.suppress(OSError):
                os.unlink(r.log)

        while todo or running:
            while todo and len(running) < jobs:
                spec = todo.pop(0)
                if spec.skip:
                    r = _Running(spec, None, None, "", time.time())
                    finish(r, {"zoo": spec.zoo, "model": spec.name, "status": "skipped", "error": spec.skip})
                    continue
                recv, send = ctx.Pipe(duplex=False)
                log_path = os.path.join(tmp, f"{spec.zoo}-{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.name)}.log")
                proc = ctx.Process(target=_child, args=(spec.zoo, spec.name, send, log_path), daemon=True)
                proc.start()
                send.close()
                running.append(_Running(spec, proc, recv, log_path, time.time()))
            time.sleep(0.02)
            for r in list(running):
                with contextlib.suppress(EOFError, OSError):
                    while r.conn.poll():
                        kind, *payload = r.conn.recv()
                        if kind == "phase":
                            r.phase = payload[0]
                        else:
                            r.result = payload[0]
                base = {"zoo": r.spec.zoo, "model": r.spec.name}
                if r.result is not None:
                    r.proc.join(5)
                    running.remove(r)
                    finish(r, r.result)
                elif not r.proc.is_alive():
                    running.remove(r)
                    code = r.proc.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    finish(r, {**base, "status": "crash", "phase": r.phase,
                               "error": f"child process died ({how}) while in {r.phase}: {_tail(r.log)}",
                               "error_type": "ProcessDied"})
                elif time.time() - r.start > timeout:
                    r.proc.kill()
                    r.proc.join(5)
                    running.remove(r)
                    finish(r, {**base, "status": "timeout", "phase": r.phase,
                               "error": f"no result after {timeout:g} s (in {r.phase})", "error_type": "Timeout"})
    with contextlib.suppress(OSError):
        os.rmdir(tmp)


def _git_rev() -> str:
    """The commit of the rfscope that is imported (``+dirty`` with local changes), else its path."""
    import rfscope

    where = str(Path(rfscope.__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = dirty = ""
    return (rev + ("+dirty" if dirty else "")) if rev else where


_PACKAGES = {"timm": "timm", "torchvision": "torchvision", "monai": "monai", "hf": "transformers"}


def _versions(zoos: Iterable[str]) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "rfscope": _git_rev()}
    for pkg in ("torch", *(_PACKAGES[z] for z in zoos)):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def select(zoos: Sequence[str], sample: str | None, pattern: str | None, limit: int | None) -> list[Spec]:
    specs: list[Spec] = []
    for z in zoos:
        specs.extend(SPECS[z](sample))
    if pattern:
        specs = [s for s in specs if fnmatch.fnmatchcase(s.name, pattern)]
    return specs[:limit] if limit else specs


def _parse_zoos(s: str) -> list[str]:
    zoos = list(ZOOS) if s == "all" else [z.strip() for z in s.split(",") if z.strip()]
    bad = [z for z in zoos if z not in ZOOS]
    if bad:
        raise SystemExit(f"unknown zoo {', '.join(bad)}; choose from {', '.join(ZOOS)} or all")
    return zoos


def _read(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(run lines, result records: the last one per (zoo, model))."""
    runs: list[dict[str, Any]] = []
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for p in paths:
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed sweep
            if d.get("kind") == "run":
                runs.append(d)
            elif "zoo" in d and "model" in d:
                results[(d["zoo"], d["model"])] = d
    return runs, list(results.values())


def cmd_run(a: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    zoos = _parse_zoos(a.zoo)
    available = []
    for z in zoos:
        try:
            for mod in _IMPORTS[z]:
                __import__(mod)
            available.append(z)
        except ImportError as e:
            print(f"zoo {z}: not installed ({e}); skipped", file=sys.stderr)
    specs = select(available, a.sample, a.filter, None)
    out = Path(a.out)
    if a.resume:
        _, old = _read([out])
        done = {(d["zoo"], d["model"]) for d in old if not (a.retry_failed and d["status"] in ("crash", "timeout"))}
        specs = [s for s in specs if s.key not in done]
    if a.limit:
        specs = specs[: a.limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps({"kind": "run", "argv": ["benchmarks/zoo.py", *sys.argv[1:]],
                             "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                             "models": len(specs), "jobs": a.jobs, "timeout_s": a.timeout,
                             "cpus": os.cpu_count(), "versions": _versions(available),
                             **({"label": a.label} if a.label else {})}) + "\n")
    print(f"{len(specs)} models -> {out}", file=sys.stderr)
    sweep(specs, out, a.jobs, a.timeout, a.isolation, lambda s: print(s, file=sys.stderr, flush=True))
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    for s in select(_parse_zoos(a.zoo), a.sample, a.filter, a.limit):
        print(f"{s.zoo}\t{s.name}\t{s.group}\t{s.skip or ''}")
    return 0


# ----------------------------------------------------------------------------- summary


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f} %)" if d else "0/0"


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _times(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} / {_quantile(xs, 0.9):.2f} / {max(xs):.2f}"


def _full_counts(zoos: Iterable[str]) -> dict[str, int]:
    out = {}
    for z in zoos:
        try:
            out[z] = sum(1 for s in SPECS[z](None) if not s.skip)
        except Exception:  # noqa: BLE001 - not installed, or its listing fails: no extrapolation
            pass
    return out


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def summarize(runs: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
              full: dict[str, int] | None = None) -> str:
    """The markdown report of a sweep (see the module docstring)."""
    lines: list[str] = ["# rfscope zoo sweep", ""]
    if runs:
        lines.append("Runs recorded in the results file:")
        lines.append("")
        for r in runs:
            v = r.get("versions", {})
            vs = ", ".join(f"{k} {x}" for k, x in v.items())
            lines.append(f"- {r.get('date')}: `{' '.join(r.get('argv', []))}` ({r.get('models')} models, "
                         f"{r.get('jobs')} job(s), timeout {r.get('timeout_s')} s, {r.get('cpus')} CPUs; {vs})")
        lines.append("")
    zoos = [z for z in ZOOS if any(d["zoo"] == z for d in results)]
    lines += ["## Overview", "",
              "| zoo | models | skipped | build-failed | analysed (no crash) | any unknown node | "
              "output exact / global / unknown / none | params match | analyze s (median / p90 / max) "
              "| wall s per model (median / p90 / max) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    per: dict[str, list[dict[str, Any]]] = {z: [d for d in results if d["zoo"] == z] for z in zoos}
    for z in zoos:
        ds = per[z]
        st = Counter(d["status"] for d in ds)
        tried = [d for d in ds if d["status"] in ("ok", "crash", "timeout")]
        ok = [d for d in ds if d["status"] == "ok"]
        unk = [d for d in ok if d.get("unknown_nodes")]
        outs = Counter(d.get("output_status") for d in ok)
        pm = sum(1 for d in ok if d.get("params_match"))
        lines.append(
            f"| {z} | {len(ds)} | {st['skipped']} | {st['build-failed']} | {_pct(len(ok), len(tried))} | "
            f"{_pct(len(unk), len(ok))} | {outs['exact']} / {outs['global']} / {outs['unknown']} / {outs['none']} | "
            f"{_pct(pm, len(ok))} | {_times([d['analyze_s'] for d in ok])} | "
            f"{_times([d['wall_s'] for d in ds if 'wall_s' in d and d['status'] != 'skipped'])} |")
    lines.append("")
    if full:
        lines += ["## Expected duration of a full sweep", "",
                  "Mean wall time per model in this file times the number of models in each zoo "
                  "(one job; divide by `--jobs`, on as many free cores).", "",
                  "| zoo | models in the zoo | mean wall s per model here | expected, 1 job |", "|---|---|---|---|"]
        tot = 0.0
        for z in zoos:
            walls = [d["wall_s"] for d in per[z] if "wall_s" in d and d["status"] != "skipped"]
            if z not in full or not walls:
                continue
            est = statistics.mean(walls) * full[z]
            tot += est
            lines.append(f"| {z} | {full[z]} | {statistics.mean(walls):.1f} | {est / 3600:.1f} h |")
        lines += [f"| all | | | {tot / 3600:.1f} h |", ""]
    if len(zoos) > 1:
        lines += _reasons_table([d for d in results if d["status"] == "ok"], "## Unknown reasons, all zoos together",
                                with_zoo=True)
    for z in zoos:
        lines += _zoo_section(z, per[z])
    return "\n".join(lines) + "\n"


def _reasons_table(ok: list[dict[str, Any]], title: str, with_zoo: bool = False) -> list[str]:
    """How many models each unknown reason stops (a model counts once per reason)."""
    stops: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for d in ok:
        # categories are normalised again: records written by an older version of reason_category merge
        for cat in {reason_category(c) for c in d.get("unknown_reasons", {})}:
            stops[cat] += 1
            examples.setdefault(cat, []).append(f"{d['zoo']}:{d['model']}" if with_zoo else d["model"])
    if not stops:
        return []
    lines = [title, "", "| reason | models | e.g. |", "|---|---|---|"]
    for cat, n in stops.most_common(25):
        ex = ", ".join(examples[cat][:4]) + (" ..." if len(examples[cat]) > 4 else "")
        lines.append(f"| {_esc(cat)} | {n} | {_esc(ex)} |")
    if len(stops) > 25:
        lines.append(f"| ({len(stops) - 25} more) | | |")
    return lines + [""]


def _zoo_section(z: str, ds: list[dict[str, Any]]) -> list[str]:
    ok = [d for d in ds if d["status"] == "ok"]
    lines = [f"## {z}", ""]
    st = Counter(d["status"] for d in ds)
    lines.append("Status: " + ", ".join(f"{k} {v}" for k, v in st.most_common()) + ".")
    devs = Counter(d.get("build_device") for d in ok)
    lines.append("Built on: " + ", ".join(f"{k} {v}" for k, v in devs.most_common()) + "; trace path: "
                 + ", ".join(f"{k} {v}" for k, v in Counter(d.get("trace_path") for d in ok).most_common()) + ".")
    on_cpu: dict[str, list[str]] = {}
    for d in ds:
        if d.get("build_device") == "cpu":
            on_cpu.setdefault(reason_category(d.get("meta_error") or "?"), []).append(d["model"])
    for why, names in on_cpu.items():
        lines.append(f"Built on CPU after the meta device failed ({why}): {', '.join(names)}.")
    mism = [d for d in ok if not d.get("params_match")]
    if mism:
        lines.append("Parameter counts that differ from PyTorch's: " + ", ".join(
            f"{d['model']} ({d.get('params_rfscope')} vs {d.get('params_torch')})" for d in mism) + ".")
    lines.append("")
    lines += _reasons_table(ok, "Unknown reasons (root nodes only), by the number of models they stop:")
    fails = [d for d in ds if d["status"] in ("crash", "timeout", "build-failed")]
    if fails:
        cats = Counter(reason_category(d.get("error", "")) for d in fails)
        lines += ["Failures by error:", "", "| error | models |", "|---|---|"]
        lines += [f"| {_esc(c)} | {n} |" for c, n in cats.most_common()]
        lines.append("")
    listed = sorted(fails + [d for d in ok if d.get("unknown_nodes") or d.get("output_status") == "none"],
                    key=lambda d: (d["status"] == "ok", d["model"]))
    if listed:
        lines += ["Models with a failure or unknown nodes:", "",
                  "| model | status | input | unknown / nodes | output | first reason |", "|---|---|---|---|---|---|"]
        for d in listed:
            if d["status"] == "ok":
                fu = d.get("first_unknown")
                if fu:
                    op, cat = op_name(fu.get("op", "")), reason_category(fu.get("category", ""))
                    why = cat if ": " in cat or cat.startswith("no plugin") else f"{op}: {cat}"
                else:
                    why = f"no RF on any node ({d.get('output_reason', '')})"
                lines.append(f"| {d['model']} | ok | {d.get('input', '')} | {d['unknown_nodes']} / {d['nodes']} | "
                             f"{d.get('output_status')} | {_esc(why)} |")
            else:
                lines.append(f"| {d['model']} | {d['status']} | {d.get('input', '')} | | | "
                             f"{_esc(d.get('error', ''))[:200]} |")
        lines.append("")
    skipped: dict[str, list[str]] = {}
    for d in ds:
        if d["status"] == "skipped":
            skipped.setdefault(d.get("error") or "skipped", []).append(d["model"])
    for why, names in skipped.items():
        lines += [f"Skipped, {why} ({len(names)}): " + ", ".join(sorted(names)) + ".", ""]
    return lines


def cmd_summarize(a: argparse.Namespace) -> int:
    runs, results = _read(Path(p) for p in a.results)
    full = None
    if not a.no_extrapolate:
        full = _full_counts(sorted({d["zoo"] for d in results}))
    text = summarize(runs, results, full)
    title = a.title
    if a.title_from:  # the hand-written paragraphs of an earlier summary: between the heading and the runs
        old = Path(a.title_from).read_text()
        _, _, rest = old.partition("# rfscope zoo sweep\n")
        title = rest.split("Runs recorded in the results file:")[0].split("\n## ")[0].strip() or None
    if title:
        text = text.replace("# rfscope zoo sweep\n", f"# rfscope zoo sweep\n\n{title}\n", 1)
    sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def selection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--zoo", default="timm", help="timm, torchvision, monai, hf, comma-separated, or all")
        sp.add_argument("--sample", default=None, metavar="per-module[:K]",
                        help="the first K (default 1) models of each timm module / torchvision family")
        sp.add_argument("--filter", default=None, help="shell glob on model names, e.g. 'resnet*'")
        sp.add_argument("--limit", type=int, default=None, help="at most N models (after filter and resume)")

    r = sub.add_parser("run", help="run the sweep, appending one JSON line per model")
    selection(r)
    r.add_argument("--jobs", type=int, default=1, help="models analysed in parallel (default 1)")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds per model, build included (default 300)")
    r.add_argument("--out", default="zoo_results.jsonl", help="JSON-lines file to append to")
    r.add_argument("--resume", action="store_true", help="skip models already in --out")
    r.add_argument("--retry-failed", action="store_true", help="with --resume: run crashed/timed-out models again")
    r.add_argument("--isolation", choices=["fork", "spawn"], default="fork" if sys.platform == "linux" else "spawn",
                   help="fork: children forked from a parent that imported the libraries once (fast); "
                        "spawn: a fresh interpreter per model")
    r.add_argument("--label", default=None, help="free text stored with the run (e.g. which rfscope snapshot)")
    r.set_defaults(fn=cmd_run)
    ls = sub.add_parser("list", help="list the models a selection would run")
    selection(ls)
    ls.set_defaults(fn=cmd_list)
    s = sub.add_parser("summarize", help="markdown summary of result files")
    s.add_argument("results", nargs="+")
    s.add_argument("--title", default=None, help="a paragraph under the heading (e.g. 'sample, not a full sweep')")
    s.add_argument("--title-from", default=None, metavar="MD",
                   help="reuse the paragraphs under the heading of an earlier summary (e.g. benchmarks/ZOO.md)")
    s.add_argument("--no-extrapolate", action="store_true", help="do not import the zoos to count their models")
    s.set_defaults(fn=cmd_summarize)
    a = p.parse_args(argv)
    return int(a.fn(a))


if __name__ == "__main__":
    sys.exit(main())
