"""Footprints on the ground: a corpus scene that holds or adjoins an evaluation image is found (issue 21).

Real files: OSCD's saclay_w (unlabelled corpus) holds EuroSAT's Residential_2285 and adjoins the
labelled saclay_e (same Sentinel-2 granule and dates).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rsmae.datasets.footprints import file_footprints, footprint_overlaps, store_footprints
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import DATA, EUROSAT, OSCD, ROOT

SACLAY_W = next((DATA / "oscd_unlabelled" / "saclay_w" / "imgs_1").glob("*B02.tif"))
SACLAY_E = next((OSCD / "saclay_e" / "imgs_1").glob("*B02.tif"))
PISA = next((OSCD / "pisa" / "imgs_1").glob("*B02.tif"))
RESIDENTIAL = EUROSAT / "train" / "Residential" / "Residential_2285.tif"


def test_a_eurosat_patch_inside_a_corpus_city_and_an_adjoining_city_are_found() -> None:
    corpus = file_footprints([SACLAY_W])
    evaluation = file_footprints([RESIDENTIAL, SACLAY_E, PISA, *sorted(EUROSAT.rglob("*.tif"))[:20]])
    found = {(Path(p.evaluation).name, p.overlap) for p in footprint_overlaps(corpus, evaluation, 1000)}
    assert found == {(RESIDENTIAL.name, 1.0), (SACLAY_E.name, 0.0)}  # inside; adjoining, within 1 km
    touching = footprint_overlaps(corpus, evaluation, 0.0)
    assert {Path(p.evaluation).name for p in touching} == {RESIDENTIAL.name}


def test_a_store_gives_the_footprints_of_its_files(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    tile_scenes([str(SACLAY_W.parent)], out, TileConfig(tile_size=64, bands=("B02", "B03", "B04")))
    (stored,) = store_footprints(out)
    (read,) = file_footprints([SACLAY_W])
    assert stored.name.endswith(":saclay_w/imgs_1")
    assert stored.bounds == pytest.approx(read.bounds, abs=1e-6)
    assert footprint_overlaps([stored], file_footprints([RESIDENTIAL]))[0].overlap == 1.0


@pytest.mark.slow
def test_the_default_corpus_keeps_away_from_every_evaluation_image(tmp_path: Path) -> None:
    def run(*args: str) -> int:
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "footprint_leaks.py"), *args],
                              capture_output=True, cwd=ROOT).returncode

    assert run("--out", str(tmp_path / "a.md")) == 0  # saclay_w left out
    assert run("--exclude", "--out", str(tmp_path / "b.md")) == 1
    assert "Residential_2285" in (tmp_path / "b.md").read_text()
