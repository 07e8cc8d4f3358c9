"""Data folders reached through symbolic links (DVC, git-annex): messages name the path the user gave.

Files are compared by resolved path (and bytes); what the user reads names the store's record and the
evaluation file as passed in, not where the links lead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rsmae.datasets import EuroSAT, check_no_eval_images, find_eval_images
from rsmae.errors import EvaluationLeakError
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT

CONFIG = TileConfig(tile_size=64, band_order="eurosat")


def _leak_message(stores: list[Path], eval_files: list[Path]) -> str:
    with pytest.raises(EvaluationLeakError) as err:
        check_no_eval_images(stores, eval_files)
    return str(err.value)


def test_leak_through_a_linked_data_folder_names_the_given_path(tmp_path: Path) -> None:
    linked = tmp_path / "data" / "eurosat"
    linked.parent.mkdir()
    linked.symlink_to(EUROSAT.resolve(), target_is_directory=True)  # a DVC-style link to the data folder
    image = sorted((linked / "test" / "River").glob("*.tif"))[0]
    real = image.resolve()
    assert real != image and not str(real).startswith(str(tmp_path))
    eval_files = EuroSAT(linked, "test").paths
    assert image in [Path(p) for p in eval_files]  # the dataset keeps the linked names

    tile_scenes([str(image)], tmp_path / "linked.zarr", CONFIG)  # corpus tiled through the link
    message = _leak_message([tmp_path / "linked.zarr"], eval_files)
    assert message.startswith(f"{image}: scene River/{image.stem} ") and str(real) not in message
    assert "a copy of" not in message

    tile_scenes([str(real)], tmp_path / "real.zarr", CONFIG)  # corpus tiled from where the link leads
    message = _leak_message([tmp_path / "real.zarr"], eval_files)
    assert message.startswith(f"{real}: ") and "a copy of" not in message  # one file, two names
    (found,) = find_eval_images([tmp_path / "real.zarr"], eval_files, by_content=False)
    assert (found.file, found.eval_file) == (real, image)


def test_leak_of_a_linked_file_names_the_link(tmp_path: Path) -> None:
    """git-annex links each file: the evaluation image given is a link, the corpus a copy."""
    real = sorted((EUROSAT / "test" / "Forest").glob("*.tif"))[0].resolve()
    link = tmp_path / "annex" / "Forest" / real.name
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    copy = tmp_path / "corpus" / "Forest" / "scene_0001.tif"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(real.read_bytes())
    tile_scenes([str(copy)], tmp_path / "copy.zarr", CONFIG)
    message = _leak_message([tmp_path / "copy.zarr"], [link])
    assert message.startswith(f"{copy} (a copy of {link}): ") and str(real) not in message
