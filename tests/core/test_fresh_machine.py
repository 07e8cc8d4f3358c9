"""What a new user hits on a fresh machine: the environment's imports, re-runs of the tiler, a demo
corpus that holds no evaluation image."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rsmae.data import TileDataModule
from rsmae.datasets import EuroSAT, check_no_eval_images, find_eval_images
from rsmae.errors import EvaluationLeakError
from rsmae.tasks import ProbeCallback
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import BIGEARTHNET, DATA, EUROSAT, LANDSAT, ROOT, load_script

tile = load_script("pipelines/tile.py")

TORCHGEO_SAMPLE = f"""
import torchgeo.datasets
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler, Units

class Landsat8(RasterDataset):
    filename_glob = {LANDSAT.name!r}
    all_bands = ("B2", "B3", "B4")
    separate_files = False

ds = Landsat8([{str(LANDSAT.parent)!r}], bands=["B2", "B3", "B4"])
batch = stack_samples([ds[q] for q in RandomGeoSampler(ds, size=32, length=2, units=Units.PIXELS)])
print(tuple(batch["image"].shape))
"""


@pytest.mark.slow
def test_torchgeo_datasets_and_samplers_work() -> None:
    """``import torchgeo.datasets`` (it needs ``requests``) and a RasterDataset sample, in a new process."""
    proc = subprocess.run([sys.executable, "-c", TORCHGEO_SAMPLE], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "(2, 3, 32, 32)"


def test_torchgeo_datasets_dependency_declared() -> None:
    """A fresh ``make install`` (pyproject) and ``environment.yml`` both bring ``requests``."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert block, "pyproject.toml has no [project] dependencies"
    names = {m.lower() for m in re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block.group(1), re.M)}
    assert {"torchgeo", "requests"} <= names
    assert re.search(r"^\s*- requests\b", (ROOT / "environment.yml").read_text(), re.MULTILINE)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime_ns, sha256 of the bytes)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_on_finished_store_writes_nothing(tmp_path: Path, capsys) -> None:
    """Readers may use a finished store: the same command again leaves every byte and mtime alone."""
    patches = sorted(str(p) for p in BIGEARTHNET.iterdir() if p.is_dir())
    out = tmp_path / "ben.zarr"
    args = ["--sensor", "s2-l2a", "--tile-size", "60", "--shard-tiles", "4", "--out", str(out)]
    assert tile.main([*patches[:3], *args]) == 0
    before = _snapshot(out)
    assert "zarr.json" in before and any(k.startswith("index/") for k in before)
    capsys.readouterr()
    assert tile.main([*patches[:3], *args]) == 0
    assert "3 scenes (0 new), 12 tiles kept" in capsys.readouterr().out
    assert _snapshot(out) == before
    assert tile.main([*patches, *args]) == 0  # new scenes still append
    after = _snapshot(out)
    assert after["zarr.json"] != before["zarr.json"] and len(after) > len(before)


def _probe_setup(store: Path, tmp_path: Path) -> ProbeCallback:
    """ProbeCallback.setup as the trainer runs it, on a datamodule over ``store``."""
    dm = TileDataModule([str(store)], num_workers=0)
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                              datamodule=dm)
    probe = ProbeCallback(root=str(EUROSAT))
    probe.setup(trainer, SimpleNamespace(hparams={"data_info": dm.data_info}), "fit")
    return probe


def test_probe_refuses_a_corpus_holding_a_eurosat_test_image(tmp_path: Path) -> None:
    test_image = sorted((EUROSAT / "test" / "River").glob("*.tif"))[0]
    config = TileConfig(tile_size=64, band_order="eurosat")
    store = tmp_path / "leaky.zarr"
    tile_scenes([str(EUROSAT / "train" / "River"), str(test_image)], store, config)
    with pytest.raises(EvaluationLeakError, match=re.escape(str(test_image))) as err:
        _probe_setup(store, tmp_path)
    assert "1 such file(s)" in str(err.value) and isinstance(err.value, ValueError)
    # a renamed copy is the same image
    copy = tmp_path / "copies" / "scene_0001.tif"
    copy.parent.mkdir()
    shutil.copy(test_image, copy)
    tile_scenes([str(copy)], tmp_path / "copy.zarr", config)
    with pytest.raises(EvaluationLeakError, match=f"a copy of {re.escape(str(test_image))}"):
        check_no_eval_images([tmp_path / "copy.zarr"], EuroSAT(EUROSAT, "test").paths)
    assert not find_eval_images([tmp_path / "copy.zarr"], EuroSAT(EUROSAT, "test").paths, by_content=False)


def test_demo_style_corpus_passes_the_probe_check(tmp_path: Path) -> None:
    city = DATA / "oscd_unlabelled" / "norcia"  # the demo corpus: oscd_unlabelled + eo-learn scenes
    store = tmp_path / "s2_l1c.zarr"
    tile_scenes([str(city)], store, TileConfig(tile_size=64))
    probe = _probe_setup(store, tmp_path)
    assert len(probe.data["test"]) == 54


def test_demo_target_tiles_no_evaluation_dataset() -> None:
    """The Makefile's demo corpus keeps EuroSAT (probe) and oscd_subset (change detection) out."""
    text = (ROOT / "Makefile").read_text()
    demo = re.sub(r"\\\n\s*", " ", text[text.index("\ndemo:"):].split("\n\n")[0])  # one line per command
    tiled = " ".join(line for line in demo.split("\n") if "tile.py" in line)
    assert "oscd_unlabelled" in tiled and "eolearn" in tiled
    assert "eurosat" not in tiled.lower() and "oscd_subset" not in tiled
