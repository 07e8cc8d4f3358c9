"""A weights file's metadata is data: it rebuilds the model, and never makes timm fetch or read files.

Every refusal is checked twice: the error names the file and the key, and a Python audit hook sees no
``open`` of the other file and no network call while loading. A control run with the check switched
off shows the hook does see the other file being read (so the tests can fail).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import rsmae.models.meta as meta_module
import rsmae.models.weights as weights
import rsmae.tasks.change as change
import rsmae.tasks.pretrain as pretrain
from rsmae.bands import get_sensor
from rsmae.errors import CheckpointError, ModelConfigError, WeightsError
from rsmae.models import BackboneMeta, create_encoder, load_backbone, save_backbone
from rsmae.models.weights import read_backbone_meta
from rsmae.tasks.change import ChangeTask, load_change_model, save_change_model
from rsmae.tasks.pretrain import PretrainTask, export_backbone

S2 = list(get_sensor("s2-l1c").names)
IMG, PATCH = 32, 8
_NETWORK = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request")
_events: list[tuple[str, str]] | None = None  # recording while not None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _events is not None and (event == "open" or event in _NETWORK):
        _events.append((event, str(args[0]) if args else ""))


@contextmanager
def _watch() -> Iterator[list[tuple[str, str]]]:
    """Record the files opened and the network calls made inside the block (Python audit events)."""
    global _events, _hooked
    if not _hooked:  # an audit hook cannot be removed: one per process, inert outside _watch
        sys.addaudithook(_audit)
        _hooked = True
    _events = []
    try:
        yield _events
    finally:
        _events = None


def _touched(events: list[tuple[str, str]], other: Path) -> list[tuple[str, str]]:
    return [(e, a) for e, a in events if e in _NETWORK or Path(a).name == other.name]


def _meta(**kw: Any) -> BackboneMeta:
    fields = dict(preset="vit_test", img_size=IMG, patch_size=PATCH, in_chans=len(S2), bands=S2,
                  sensor="s2-l1c", mean=[1000.0] * len(S2), std=[500.0] * len(S2), gsd=10.0)
    return BackboneMeta(**{**fields, **kw})


def _backbone(path: Path, **kw: Any) -> Path:
    torch.manual_seed(0)
    meta = _meta(**kw)
    enc = create_encoder("vit_test", in_chans=len(S2), img_size=IMG, patch_size=PATCH, **meta.encoder_kwargs)
    return save_backbone(enc, path, meta)


def _rewrite(src: Path, dst: Path, key: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Copy a safetensors file, its JSON metadata under ``key`` changed by ``edit`` (a hand-edited file)."""
    with safe_open(str(src), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    value = json.loads(meta[key])
    edit(value)
    save_file(state, str(dst), metadata={**meta, key: json.dumps(value)})
    return dst


def _overlay(other: Path) -> dict[str, Any]:
    """timm options that load ``other`` as pretrained weights."""
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(other)}}


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """Another weights file, one that timm would read if a metadata key pointed it there."""
    path = tmp_path / "elsewhere" / "other.pth"
    path.parent.mkdir()
    torch.save(create_encoder("vit_test", in_chans=len(S2), img_size=IMG, patch_size=PATCH).state_dict(),
               path)
    return path


# ---------------------------------------------------------------- backbone files


def test_backbone_written_by_save_backbone_loads(tmp_path: Path) -> None:
    kwargs = {"depth": 1, "drop_path_rate": 0.1, "qkv_bias": True}
    path = _backbone(tmp_path / "ok.safetensors", encoder_kwargs=kwargs)
    with _watch() as events:
        model = load_backbone(path)
    assert model.rsmae_meta.encoder_kwargs == kwargs and len(model.blocks) == 1
    assert not [e for e in events if e[0] in _NETWORK]


@pytest.mark.parametrize("make", [
    _overlay,
    lambda o: {"checkpoint_path": str(o)},
    lambda o: {"not_an_encoder_option": 1},
], ids=["pretrained_cfg_overlay", "checkpoint_path", "unknown_key"])
def test_backbone_with_foreign_encoder_kwargs_is_refused(tmp_path: Path, other: Path, make: Callable) -> None:
    extra = make(other)
    good = _backbone(tmp_path / "good.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", "rsmae", lambda m: m["encoder_kwargs"].update(extra))
    key = sorted(extra)[-1]
    for load in (load_backbone, read_backbone_meta, _through_timm):
        with _watch() as events, pytest.raises(WeightsError, match=f"{bad}: .*'{key}'"):
            load(bad)
        assert not _touched(events, other)


def _through_timm(path: Path) -> torch.nn.Module:
    return timm.create_model("rsmae_vit_test", pretrained=True, pretrained_cfg_overlay={"file": str(path)})


def test_control_without_the_check_timm_reads_the_other_file(tmp_path: Path, other: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit hook sees the read the allow-list prevents: the tests above can fail."""
    good = _backbone(tmp_path / "good.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", "rsmae",
                   lambda m: m["encoder_kwargs"].update(_overlay(other)))
    monkeypatch.setattr(meta_module, "check_encoder_kwargs", lambda kwargs: None)
    with _watch() as events:
        load_backbone(bad)
    assert _touched(events, other)


def test_backbone_with_unknown_top_level_key_is_refused(tmp_path: Path, other: Path) -> None:
    good = _backbone(tmp_path / "good.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", "rsmae",
                   lambda m: m.update(pretrained_cfg_overlay={"file": str(other)}))
    with _watch() as events, pytest.raises(WeightsError, match=f"{bad}: .*'pretrained_cfg_overlay'"):
        load_backbone(bad)
    assert not _touched(events, other)
    newer = _rewrite(good, tmp_path / "newer.safetensors", "rsmae", lambda m: m.update(format_version=9, x=1))
    with pytest.raises(WeightsError, match="newer than this rsmae reads"):  # a newer file: "upgrade"
        load_backbone(newer)


def test_save_backbone_refuses_metadata_it_would_not_load(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="'checkpoint_path'"):
        _meta(encoder_kwargs={"checkpoint_path": "x.pth"})


# ---------------------------------------------------------------- atomic write


def test_save_backbone_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _backbone(tmp_path / "b.safetensors")
    before = path.read_bytes()

    def broken(state: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise SafetensorError("I/O error: No space left on device")

    monkeypatch.setattr(weights, "save_file", broken)
    with pytest.raises(WeightsError, match=f"{path}: cannot write the backbone there"):
        _backbone(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]  # no temporary left


def test_save_backbone_into_a_file_is_a_weights_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WeightsError, match="cannot write the backbone there"):
        _backbone(tmp_path / "file" / "b.safetensors")


# ---------------------------------------------------------------- change models


@pytest.fixture
def change_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    task = ChangeTask(bands=S2, img_size=IMG, preset="vit_test", patch_size=PATCH, mean=[0.0] * 13,
                      std=[1.0] * 13)
    return save_change_model(task, tmp_path / "change.safetensors", extra={"threshold": 0.4})


def test_change_model_written_by_save_change_model_loads(change_model: Path) -> None:
    task, extra = load_change_model(change_model)
    assert extra == {"threshold": 0.4} and task.hparams.preset == "vit_test"


@pytest.mark.parametrize(("edit", "key"), [
    (lambda h, o: h.update(backbone=str(o)), "backbone"),
    (lambda h, o: h.update(checkpoint_path=str(o)), "checkpoint_path"),
    (lambda h, o: h["encoder"].update(_overlay(o)), "encoder.pretrained_cfg_overlay"),
    (lambda h, o: h["encoder"]["encoder_kwargs"].update(_overlay(o)), "pretrained_cfg_overlay"),
], ids=["backbone", "unknown_key", "encoder_field", "encoder_kwargs"])
def test_change_model_with_foreign_keys_is_refused(change_model: Path, other: Path, tmp_path: Path,
                                                   edit: Callable, key: str) -> None:
    if key == "backbone":
        other = _backbone(tmp_path / "elsewhere" / "other.safetensors")
    bad = _rewrite(change_model, tmp_path / "bad.safetensors", "rsmae_change", lambda h: edit(h, other))
    with _watch() as events, pytest.raises(WeightsError, match=f"{bad}: .*'{key}'"):
        load_change_model(bad)
    assert not _touched(events, other)


def test_control_without_the_check_the_change_model_reads_the_backbone(
        change_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = _backbone(tmp_path / "elsewhere" / "other.safetensors")
    bad = _rewrite(change_model, tmp_path / "bad.safetensors", "rsmae_change",
                   lambda h: h.update(backbone=str(other)))
    monkeypatch.setattr(change, "_check_saved_hparams", lambda path, hparams: None)
    with _watch() as events:
        load_change_model(bad)
    assert _touched(events, other)


def test_change_model_with_broken_metadata_is_a_weights_error(change_model: Path, tmp_path: Path) -> None:
    with safe_open(str(change_model), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={**meta, "rsmae_change": meta["rsmae_change"][:-5]})
    with pytest.raises(WeightsError, match=f"{bad}: change-model metadata is not valid JSON"):
        load_change_model(bad)


# ---------------------------------------------------------------- pretraining checkpoints

_FOREIGN = [_overlay, lambda o: {"checkpoint_path": str(o)}]


def _pretrain_hparams(encoder_kwargs: dict[str, Any]) -> dict[str, Any]:
    info = {"bands": S2, "sensor": "s2-l1c", "mean": [1.0] * 13, "std": [2.0] * 13, "gsd": 10.0}
    return {"preset": "vit_test", "patch_size": PATCH, "img_size": IMG, "in_chans": len(S2),
            "data_info": info, "encoder_kwargs": encoder_kwargs}


@pytest.mark.parametrize("make", _FOREIGN, ids=["pretrained_cfg_overlay", "checkpoint_path"])
def test_pretrain_task_refuses_foreign_encoder_kwargs(other: Path, make: Callable) -> None:
    hparams = _pretrain_hparams(make(other))  # what a crafted checkpoint's hyper_parameters rebuild
    key = sorted(hparams["encoder_kwargs"])[-1]
    with _watch() as events, pytest.raises(ModelConfigError, match=f"encoder_kwargs key.*'{key}' refused"):
        PretrainTask(**hparams)
    assert not _touched(events, other)


def test_crafted_pretraining_checkpoint_is_refused(other: Path, tmp_path: Path) -> None:
    task = PretrainTask(**_pretrain_hparams({}))
    bad = tmp_path / "bad.ckpt"  # a pretraining checkpoint whose hyper_parameters were edited
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {**task.hparams, **_pretrain_hparams(
        _overlay(other))}, "pytorch-lightning_version": L.__version__}, bad)
    with _watch() as events:
        with pytest.raises(CheckpointError, match=f"{bad}: encoder_kwargs key.*'pretrained_cfg_overlay'"):
            export_backbone(bad, tmp_path / "b.safetensors")
        with pytest.raises(ModelConfigError, match="'pretrained_cfg_overlay' refused"):
            PretrainTask.load_from_checkpoint(bad, map_location="cpu", weights_only=True)
    assert not _touched(events, other) and not (tmp_path / "b.safetensors").exists()


def test_control_without_the_check_the_pretrain_task_reads_the_other_file(
        other: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrain, "vet_encoder_kwargs", lambda kwargs: dict(kwargs or {}))
    with _watch() as events:
        PretrainTask(**_pretrain_hparams(_overlay(other)))
    assert _touched(events, other)
