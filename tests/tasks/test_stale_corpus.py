"""A pretraining checkpoint records its corpus (per store: scenes, tiles, statistics digest, not the
path); resuming it after its store was appended is refused, naming the checkpoint and what changed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from rsmae.errors import CheckpointError
from rsmae.tasks.init import check_corpus, corpus_record
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT, load_script

pretrain = load_script("pipelines/pretrain.py")

TILING = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True, shard_tiles=32)


def test_corpus_record_ignores_the_path_and_follows_the_contents(tmp_path: Path) -> None:
    store = tmp_path / "a.zarr"
    tile_scenes([str(EUROSAT / "train" / "Forest")], store, TILING)
    moved = shutil.copytree(store, tmp_path / "elsewhere" / "b.zarr")
    [record] = corpus_record([store])
    assert corpus_record([moved]) == [record] and record["tiles"] == record["n_scenes"] > 0
    tile_scenes([str(EUROSAT / "train" / "Forest"), str(EUROSAT / "train" / "River")], moved, TILING)
    [grown] = corpus_record([moved])
    assert grown["tiles"] > record["tiles"] and grown["stats"] != record["stats"]
    with pytest.raises(CheckpointError, match=rf"last.ckpt: .*store 0: n_scenes {record['n_scenes']} -> "
                                              rf"{grown['n_scenes']}; store 0: tiles"):
        check_corpus("last.ckpt", [record], [grown])
    with pytest.raises(CheckpointError, match="stores 1 -> 2"):
        check_corpus("last.ckpt", [record], [record, grown])
    check_corpus("last.ckpt", [record], [dict(record)])  # unchanged: resumes


@pytest.mark.slow
def test_resume_after_the_store_was_appended_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str],
                                                        pretrain_config) -> None:
    store = tmp_path / "corpus.zarr"
    tile_scenes([str(EUROSAT / "train" / c) for c in ("AnnualCrop", "Forest")], store, TILING)
    before = corpus_record([store])
    run = tmp_path / "run"
    assert pretrain.main(["fit", "--config", str(pretrain_config(run, store, steps=2, every=1))]) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["rsmae_corpus"] == before
    # a checkpoint made before the record existed still resumes, with a warning
    old = torch.load(last, map_location="cpu", weights_only=True)
    del old["rsmae_corpus"]
    torch.save(old, last)
    with caplog.at_level(logging.WARNING):
        assert pretrain.main(["fit", "--config", str(pretrain_config(run, store, steps=3, every=1)),
                              "--ckpt_path", "last"]) == 0
    assert "records no corpus" in caplog.text
    # the store grows: resuming it now would silently change the statistics and the sampling order
    tile_scenes([str(EUROSAT / "train" / c) for c in ("AnnualCrop", "Forest", "River")], store, TILING)
    after = corpus_record([store])
    capsys.readouterr()
    assert pretrain.main(["fit", "--config", str(pretrain_config(run, store, steps=4, every=1)),
                          "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and f"tiles {before[0]['tiles']} -> {after[0]['tiles']}" in err
