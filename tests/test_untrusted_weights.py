"""A weights file's metadata is data: it rebuilds the model, and never makes timm fetch or read files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import SafetensorError

import rsmae.models.weights as weights
from rsmae.bands import get_sensor
from rsmae.errors import WeightsError
from rsmae.models import BackboneMeta, create_encoder, save_backbone

S2 = list(get_sensor("s2-l1c").names)
IMG, PATCH = 32, 8


def _meta(**kw: Any) -> BackboneMeta:
    fields = dict(preset="vit_test", img_size=IMG, patch_size=PATCH, in_chans=len(S2), bands=S2,
                  sensor="s2-l1c", mean=[1000.0] * len(S2), std=[500.0] * len(S2), gsd=10.0)
    return BackboneMeta(**{**fields, **kw})


def _backbone(path: Path, **kw: Any) -> Path:
    torch.manual_seed(0)
    meta = _meta(**kw)
    enc = create_encoder("vit_test", in_chans=len(S2), img_size=IMG, patch_size=PATCH, **meta.encoder_kwargs)
    return save_backbone(enc, path, meta)


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
