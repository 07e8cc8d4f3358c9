"""Shared fixtures: the real data in ../shared/data, small tiled stores made from it, real EuroSAT tiles,
a datamodule and a CPU trainer, and :func:`load_script` for the scripts of ``pipelines/``, ``benchmarks/``
and ``datasets/``.

Test files import the paths below as ``from tests.conftest import ROOT`` (``tests`` is a package, its
folders mirror those of ``rsmae``).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch.compile's kernel cache lives in the checkout, not in the machine-wide /tmp/torchinductor_<user>:
# a compile killed half-way there (another process, another checkout) left kernels that aborted this
# suite. Set before torch is imported (its first cache lookup fixes the folder); subprocesses inherit it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "torchinductor"))

import functools  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rsmae.data import TileDataModule  # noqa: E402
from rsmae.tiling import TileConfig, tile_scenes  # noqa: E402

DATA = Path(os.environ.get("RSMAE_DATA", ROOT.parent / "shared" / "data"))
OSCD = DATA / "oscd_subset" / "Onera Satellite Change Detection dataset - Images"
EUROSAT = DATA / "eurosat_ms_subset"
BIGEARTHNET = DATA / "bigearthnet_s2_samples"
LANDSAT = DATA / "landsat8_scene" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"


def pytest_sessionstart(session: pytest.Session) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # `make test` runs one worker per core: each gets its share of the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
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


@functools.cache
def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the checkout, e.g. ``"pipelines/tile.py"``) as a module, once.

    ``pipelines/``, ``benchmarks/`` and ``datasets/<name>/`` are folders of scripts, not packages: the
    script's folder is first on ``sys.path`` while it loads (as when it runs: benchmarks import the
    modules beside them), and taken off again. The module is named after its path
    (``pipelines_tile``, ``datasets_tinyimagenet_prepare``), so two ``prepare.py`` never clash.
    """
    file = ROOT / path
    name = "_".join(Path(path).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up by name
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(file.parent))
    return module


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """Four real 13-band EuroSAT tiles, standardised per band, cropped to 32 px (the model tests)."""
    rasterio = pytest.importorskip("rasterio")
    files = sorted(EUROSAT.glob("train/*/*.tif"))[::50][:4]
    if len(files) < 4:
        pytest.skip(f"EuroSAT subset not found under {EUROSAT}")
    arrays = []
    for f in files:
        with rasterio.open(f) as src:
            arrays.append(src.read().astype(np.float32))
    x = torch.from_numpy(np.stack(arrays))[..., :32, :32]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


@pytest.fixture(scope="session")
def tile_datamodule() -> Callable[..., TileDataModule]:
    """``tile_datamodule(store, batch_size=8)``: a :class:`TileDataModule` of one store, no workers."""

    def make(store: Path, batch_size: int = 8) -> TileDataModule:
        return TileDataModule([str(store)], batch_size=batch_size, num_workers=0)

    return make


@pytest.fixture(scope="session")
def cpu_trainer() -> Callable[..., L.Trainer]:
    """``cpu_trainer(steps, **kw)``: a quiet one-device CPU Trainer of ``steps`` steps, no validation."""

    def make(steps: int, **kw: Any) -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, **kw)

    return make
