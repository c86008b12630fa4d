"""Checkpoint layouts that training code writes, read into a copy of the model."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import rfscope
from rfscope.cli import main
from rfscope.weights import WeightsError, WeightsNote


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))


def _trained() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    m = _net()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m[1].running_mean.fill_(0.5)
    return m, m.state_dict()


def _load(model: nn.Module, path: Path) -> tuple[nn.Module, list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cp = rfscope.load_weights(model, path)
    return cp, [str(x.message) for x in w if issubclass(x.category, WeightsNote)]


def _same(cp: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    got = cp.state_dict()
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_pytorch_examples_imagenet_checkpoint(tmp_path: Path) -> None:
    m, sd = _trained()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sd = m.state_dict()
    ck = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": {"module." + k: v for k, v in sd.items()},
                "best_acc1": torch.tensor(69.76), "optimizer": opt.state_dict(),
                "scheduler": {"last_epoch": 90}}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, sd)
    assert notes == [f"checkpoint {str(ck)!r}: loaded its ['state_dict'] entry, "
                     "the 'module.' prefix stripped from every key"]


def test_lightning_checkpoint(tmp_path: Path) -> None:
    _, sd = _trained()
    ck = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.2.0",
                "state_dict": {"model." + k: v for k, v in sd.items()}, "loops": {}, "lr_schedulers": []}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, sd)
    assert len(notes) == 1 and "'model.' prefix stripped" in notes[0]


def test_model_entry_next_to_a_tensor(tmp_path: Path) -> None:
    _, sd = _trained()
    ck = tmp_path / "ck.pt"
    torch.save({"model": sd, "epoch": torch.tensor(7)}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, sd)
    assert notes == [f"checkpoint {str(ck)!r}: loaded its ['model'] entry"]


def test_prefix_kept_when_the_model_has_that_submodule(tmp_path: Path) -> None:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _net()

    src = Wrap()
    with torch.no_grad():
        src.model[0].weight.fill_(0.3)
    ck = tmp_path / "ck.pt"
    torch.save(src.state_dict(), ck)
    cp, notes = _load(Wrap(), ck)
    _same(cp, src.state_dict())
    assert notes == []  # a plain state dict: nothing to say
    torch.save({"state_dict": src.state_dict()}, ck)  # and a bare _net() gets it with 'model.' stripped
    cp2, notes2 = _load(_net(), ck)
    _same(cp2, src.model.state_dict())
    assert "'model.' prefix stripped" in notes2[0]


def test_ema_entries(tmp_path: Path) -> None:
    _, sd = _trained()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    ck = tmp_path / "timm.pth"
    torch.save({"epoch": 1, "state_dict": sd, "state_dict_ema": ema, "optimizer": {}}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, sd)  # the trained weights first; the note says the EMA copy was not used
    assert notes == [f"checkpoint {str(ck)!r}: loaded its ['state_dict'] entry; "
                     "it also holds ['state_dict_ema'], not loaded"]
    torch.save({"model_ema": {"module." + k: v for k, v in ema.items()}, "epoch": 1}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, ema)
    assert "['model_ema'] entry, the 'module.' prefix stripped" in notes[0]
    torch.save({"ema": {"module": ema}}, ck)
    _same(_load(_net(), ck)[0], ema)


def test_compiled_and_data_parallel_prefixes_together(tmp_path: Path) -> None:
    _, sd = _trained()
    ck = tmp_path / "ck.pt"
    torch.save({"module._orig_mod." + k: v for k, v in sd.items()}, ck)
    cp, notes = _load(_net(), ck)
    _same(cp, sd)
    assert "'module._orig_mod.' prefix stripped" in notes[0]


def test_mismatch_names_the_entry_it_compared(tmp_path: Path) -> None:
    _, sd = _trained()
    del sd["3.bias"]
    ck = tmp_path / "ck.pt"
    torch.save({"epoch": 1, "best_acc1": torch.tensor(1.0), "state_dict": {"module." + k: v for k, v in sd.items()}},
               ck)
    with pytest.raises(WeightsError) as e:
        rfscope.load_weights(_net(), ck)
    msg = str(e.value)
    assert "its ['state_dict'] entry, the 'module.' prefix stripped" in msg and "missing keys: 3.bias" in msg
    assert "epoch" not in msg and "best_acc1" not in msg


def test_safetensors(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file, save_model

    _, sd = _trained()
    ck = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ck))
    cp, notes = _load(_net(), ck)
    _same(cp, sd)
    assert notes == []

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Linear(4, 4, bias=False)
            self.head = nn.Linear(4, 4, bias=False)
            self.head.weight = self.emb.weight

    t = Tied()
    save_model(t, str(ck))  # stores the shared weight once
    cp = rfscope.load_weights(Tied(), ck)
    assert cp.head.weight is cp.emb.weight and torch.equal(cp.emb.weight, t.emb.weight)
    renamed = tmp_path / "model.bin"  # recognised by its header, whatever the name
    renamed.write_bytes(ck.read_bytes())
    assert torch.equal(rfscope.load_weights(Tied(), renamed).head.weight, t.emb.weight)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bogus}!")
    with pytest.raises(WeightsError, match="cannot read safetensors file"):
        rfscope.load_weights(_net(), bad)


class _WithExtra(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = 1.0

    def get_extra_state(self) -> Any:
        return {"scale": self.scale}

    def set_extra_state(self, state: Any) -> None:
        self.scale = state["scale"]


def test_extra_state_passes_through(tmp_path: Path) -> None:
    src = _WithExtra()
    src.scale = 2.5
    ck = tmp_path / "ck.pt"
    torch.save(src.state_dict(), ck)
    model = _WithExtra()
    cp = rfscope.load_weights(model, ck)
    assert cp.scale == 2.5 and model.scale == 1.0
    assert torch.equal(cp.conv.weight, src.conv.weight)
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, ck)
    assert _load(_WithExtra(), ck)[0].scale == 2.5


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_names_the_refused_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ck = tmp_path / "evil.pt"
    torch.save({"state_dict": _net().state_dict(), "hook": _Evil(marker)}, ck)
    with pytest.raises(WeightsError) as e:
        rfscope.load_weights(_net(), ck)
    msg = str(e.value)
    assert f"pickled Python objects (global {os.name}.mkdir)" in msg, msg
    assert "weights_only loading refused code" in msg and "\n" not in msg
    assert not marker.exists()
    code = CliRunner().invoke(main, ["analyze", "torchvision:alexnet", "--weights", str(ck)])
    assert code.exit_code == 2 and "mkdir" in code.output and "Traceback" not in code.output


def test_cli_says_which_entry_it_loaded_in_one_line(tmp_path: Path) -> None:
    _, sd = _trained()
    f = tmp_path / "m.py"
    f.write_text("import torch.nn as nn\n"
                 "model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))\n"
                 "input_shape = (1, 3, 16, 16)\n")
    ck = tmp_path / "ck.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}, ck)
    res = CliRunner().invoke(main, ["analyze", str(f), "--weights", str(ck), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == [
        f"rfscope: note: checkpoint {str(ck)!r}: loaded its ['state_dict'] entry, "
        "the 'module.' prefix stripped from every key"]
    assert res.stdout.lstrip().startswith("{")
