"""BackboneExport's snapshots along training (the budget curve's probe points)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsmae.models.weights import load_backbone, read_backbone_meta
from rsmae.tasks import BackboneExport, PretrainTask


def test_snapshots_every_n_steps_and_the_final_file(tmp_path: Path, eurosat_store: Path, tile_datamodule,
                                                    cpu_trainer) -> None:
    export = BackboneExport(dirpath=str(tmp_path), every_n_steps=2)
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=1)
    cpu_trainer(5, callbacks=[export]).fit(task, datamodule=tile_datamodule(eurosat_store, batch_size=4))
    names = sorted(p.name for p in (tmp_path / "backbones").iterdir())
    assert names == ["step0000000.safetensors", "step0000002.safetensors", "step0000004.safetensors"]
    assert "global step 2" in read_backbone_meta(tmp_path / "backbones" / names[1]).source
    assert "global step 5" in read_backbone_meta(tmp_path / "backbone.safetensors").source
    first = load_backbone(tmp_path / "backbones" / names[0]).state_dict()
    last = load_backbone(tmp_path / "backbone.safetensors").state_dict()
    assert any(not first[k].equal(last[k]) for k in first)  # the snapshots hold the weights of their step


def test_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="every_n_steps=0"):
        BackboneExport(every_n_steps=0)
