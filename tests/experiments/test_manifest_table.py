"""The Backbones table of the transfer results names a backbone given as a file; no cell reads ``None``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.evaluation.features import file_digest
from rsmae.experiments import GridConfig, inits, manifest_from_paths
from rsmae.experiments.inits import manifest_table
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from tests.conftest import EUROSAT

S2 = list(get_sensor("s2-l1c").names)


def _save(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1000.0] * 13, std=[600.0] * 13, gsd=10.0)
    save_backbone(create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16), path, meta)
    return path


def _row(table: str, init: str) -> list[str]:
    [line] = [line for line in table.splitlines() if line.startswith(f"| {init} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_backbones_given_as_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inits, "ROOT", tmp_path)
    demo = _save(tmp_path / "runs" / "v1" / "backbone.safetensors")
    config = GridConfig.from_dict({
        "config_path": "demo.yaml", "inits": ["random", "demo_mae"], "seeds": [0],
        "data": {"train_root": str(EUROSAT / "train"), "test_root": str(EUROSAT / "test")},
        "grid": [{"protocols": ["knn"], "fractions": ["100%"]}], "backbones_dir": str(tmp_path / "bb"),
        "cells_dir": str(tmp_path / "cells"), "cache_dir": str(tmp_path / "cache"),
        "backbones": {"demo_mae": "runs/v*/backbone.safetensors"}})
    manifest = manifest_from_paths(config)
    converted = _save(tmp_path / "bb" / "external" / "torchgeo.safetensors")  # as add_external records it
    manifest["torchgeo"] = {"path": str(converted), "sha256": file_digest(converted), "steps": None,
                            "corpus": "weights/vit_small_s2.pth", "images": None, "scenes": None}
    manifest["rs_mae"] = {"path": str(demo), "sha256": "ab" * 32, "steps": 1500, "corpus": "Sentinel-2 L1C",
                          "images": 1331, "scenes": 25}  # pretrained by the benchmark: as before
    table = manifest_table(manifest)
    assert "None" not in table
    digest = file_digest(demo)[:12]
    assert _row(table, "demo_mae")[:5] == [
        "demo_mae", "-", f"file runs/v1/backbone.safetensors (sha256 {digest})", "-", "-"]
    random = manifest["random"]
    assert _row(table, "random")[2] == f"file bb/random.safetensors (sha256 {random['sha256'][:12]})"
    source = "converted from weights/vit_small_s2.pth"
    assert _row(table, "torchgeo")[2] == (f"file bb/external/torchgeo.safetensors (sha256 "
                                          f"{file_digest(converted)[:12]}), {source}")
    assert _row(table, "rs_mae")[:5] == ["rs_mae", "1500", "Sentinel-2 L1C", "1331", "25"]
