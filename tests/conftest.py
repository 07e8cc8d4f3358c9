"""Shared fixtures: the real data in ../shared/data and small tiled stores made from it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch.compile's kernel cache lives in the checkout, not in the machine-wide /tmp/torchinductor_<user>:
# a compile killed half-way there (another process, another checkout) left kernels that aborted this
# suite. Set before torch is imported (its first cache lookup fixes the folder); subprocesses inherit it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "torchinductor"))

import json  # noqa: E402

import lightning as L  # noqa: E402
import pytest  # noqa: E402
from mae_helpers import tiles  # noqa: E402, F401  (the model tests' real-EuroSAT fixture)

from rsmae.tiling import TileConfig, tile_scenes  # noqa: E402

DATA = Path(os.environ.get("RSMAE_DATA", ROOT.parent / "shared" / "data"))
OSCD = DATA / "oscd_subset" / "Onera Satellite Change Detection dataset - Images"
EUROSAT = DATA / "eurosat_ms_subset"
BIGEARTHNET = DATA / "bigearthnet_s2_samples"
LANDSAT = DATA / "landsat8_scene" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not OSCD.is_dir():
        raise pytest.UsageError(
            f"real test data not found at {DATA}; put shared/data beside the repo or set RSMAE_DATA"
        )


@pytest.fixture(scope="session")
def bigearthnet_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "bigearthnet.zarr"
    tile_scenes([str(BIGEARTHNET)], out, TileConfig(tile_size=60, sensor="s2-l2a"))
    return out


@pytest.fixture(scope="session")
def eurosat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "eurosat.zarr"
    config = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True, shard_tiles=32)
    tile_scenes([str(EUROSAT)], out, config)
    return out


@pytest.fixture(scope="session")
def eurosat_train_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EuroSAT's train split only: a corpus the EuroSAT probe may test on (its test images are out)."""
    out = tmp_path_factory.mktemp("stores") / "eurosat_train.zarr"
    config = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True, shard_tiles=32)
    tile_scenes([str(EUROSAT / "train")], out, config)
    return out


# ---------------------------------------------------------------- pretraining helpers
# Callbacks named by class path in the pretraining tests' YAML configs ("conftest.KillAt"); the DDP
# test's subprocesses import them with tests/ on PYTHONPATH.

class SimulatedKill(RuntimeError):
    """Stands in for a killed process."""


class KillAt(L.Callback):
    """Die at the start of the batch after global step ``step`` (its checkpoint is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SimulatedKill(f"killed at step {self.step}")


class RecordBatches(L.Callback):
    """Write the tile indices each rank trained on and a checksum of its final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.indices: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indices.extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "indices": self.indices, "checksum": checksum}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
