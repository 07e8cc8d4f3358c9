"""Scene discovery: turn input paths into scenes whose bands are known by name.

A scene is either one multi-band raster (bands named by a layout) or a folder of single-band
rasters (Sentinel-2 style, band name in each file name, mixed resolutions allowed).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rsmae.bands import Sensor, band_from_filename, get_layout
from rsmae.errors import BandError, InputNotFoundError

__all__ = ["RASTER_SUFFIXES", "BandSource", "Scene", "discover_scenes"]

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".png")
_SPLITS = ("train", "val", "validation", "test")
_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass(frozen=True)
class BandSource:
    """Where one band of a scene is read from.

    Attributes:
        band: Canonical band name.
        path: Raster file.
        index: 1-based band index inside the file.
    """

    band: str
    path: str
    index: int


@dataclass(frozen=True)
class Scene:
    """One scene: a set of band sources on (roughly) one footprint.

    Attributes:
        scene_id: Unique, stable id: ``parent/name`` of the file (no suffix) or folder.
        sources: One source per store band, in store band order.
        date: Acquisition date ``YYYY-MM-DD`` when known.
        label: Class name (the parent folder) when labels are taken from folders.
        split: ``train``/``val``/``test`` when the path holds such a folder.
    """

    scene_id: str
    sources: tuple[BandSource, ...]
    date: str | None = None
    label: str | None = None
    split: str | None = None

    @property
    def files(self) -> list[str]:
        """Distinct files of the scene, in band order."""
        return list(dict.fromkeys(s.path for s in self.sources))


def _is_raster(path: Path) -> bool:
    """A raster by suffix, or a raw ENVI file (a ``.hdr`` header beside it)."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        return True
    return not path.suffix and any(path.with_name(path.name + h).is_file() for h in (".hdr", ".HDR"))


def _expand(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """Expand globs; return (path, root) pairs; roots name scene ids."""
    out: list[tuple[Path, Path]] = []
    for item in inputs:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputNotFoundError(f"{item}: the pattern matched no file or folder")
            out.extend((Path(m), Path(m).parent) for m in matches)
        else:
            path = Path(item)
            if not path.exists():
                raise InputNotFoundError(f"{item}: no such file or folder")
            out.append((path, path.parent))
    return out


def _date_of(path: Path) -> str | None:
    """Acquisition date: a ``dates.txt`` beside an ``imgs_N`` folder (OSCD), else the name."""
    folder = path if path.is_dir() else path.parent
    match = re.fullmatch(r"imgs_(\d+)", folder.name)
    dates = folder.parent / "dates.txt"
    if match and dates.is_file():
        for line in dates.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == f"date_{match.group(1)}":
                found = _DATE.search(value)
                if found:
                    return "-".join(found.groups())
    found = _DATE.search(path.name)
    return "-".join(found.groups()) if found else None


def _split_of(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        if part.lower() in _SPLITS:
            return "val" if part.lower() == "validation" else part.lower()
    return None


def _scene_id(path: Path) -> str:
    """``parent/name`` (suffix dropped): stable whichever way the inputs were named."""
    path = path.resolve()
    name = path.stem if path.is_file() else path.name
    return f"{path.parent.name}/{name}"


def _band_folder(folder: Path, files: list[Path], sensor: Sensor) -> dict[str, Path] | None:
    """Map bands to files when every raster in ``folder`` names one distinct band."""
    mapping: dict[str, Path] = {}
    for f in files:
        band = band_from_filename(f, sensor)
        if band is None or band in mapping:
            return None
        mapping[band] = f
    return mapping if len(mapping) > 1 else None


def _walk(path: Path) -> list[tuple[Path, list[Path]]]:
    """Folders under ``path`` (itself included) with the raster files directly inside them."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rasters = sorted(Path(dirpath) / f for f in filenames if _is_raster(Path(dirpath) / f))
        if rasters:
            found.append((Path(dirpath), rasters))
    return found


def discover_scenes(
    inputs: Sequence[str],
    sensor: Sensor,
    bands: Sequence[str],
    *,
    band_order: Sequence[str] | str | None = None,
    label_from_dir: bool = False,
) -> list[Scene]:
    """Find scenes in files, folders and globs.

    Args:
        inputs: Files, folders or glob patterns.
        sensor: Sensor of the data.
        bands: Canonical names of the bands to keep, in store order.
        band_order: Band order inside multi-band files (a layout name or names); default: the
            sensor's canonical order.
        label_from_dir: Take each scene's class label from its parent folder name.

    Returns:
        Scenes sorted by id.

    Raises:
        InputNotFoundError: a path is missing, a glob matches nothing, or no raster was found.
        BandError: a scene lacks one of ``bands``, or ids collide.
    """
    order = _resolve_order(band_order, sensor)
    scenes: dict[str, Scene] = {}
    for path, root in _expand(inputs):
        if path.is_file():
            entries = [(path.parent, [path])]
            single = True
        else:
            entries = _walk(path)
            single = False
            if not entries:
                raise InputNotFoundError(
                    f"{path}: no raster files ({', '.join(RASTER_SUFFIXES)}) in this folder"
                )
        for folder, files in entries:
            per_band = None if single else _band_folder(folder, files, sensor)
            if per_band is not None:
                made = [_folder_scene(folder, root, per_band, bands, label_from_dir)]
            else:
                made = [_file_scene(f, root, order, bands, label_from_dir) for f in files]
            for scene in made:
                if scene.scene_id in scenes and scenes[scene.scene_id] != scene:
                    raise BandError(
                        f"{scene.files[0]}: scene id {scene.scene_id!r} (parent/name) is taken by "
                        f"{scenes[scene.scene_id].files[0]}; rename one or tile them separately")
                scenes[scene.scene_id] = scene
    return [scenes[k] for k in sorted(scenes)]


def _resolve_order(band_order: Sequence[str] | str | None, sensor: Sensor) -> tuple[str, ...]:
    if band_order is None:
        return sensor.names
    if isinstance(band_order, str):
        return get_layout(band_order, sensor)
    return sensor.resolve(band_order)


def _folder_scene(folder: Path, root: Path, per_band: dict[str, Path], bands: Sequence[str],
                  label_from_dir: bool) -> Scene:
    missing = [b for b in bands if b not in per_band]
    if missing:
        raise BandError(
            f"{folder}: scene has no file for band(s) {', '.join(missing)} (found "
            f"{', '.join(sorted(per_band))}); add the files or select fewer bands with --bands"
        )
    sources = tuple(BandSource(b, str(per_band[b]), 1) for b in bands)
    return Scene(_scene_id(folder), sources, _date_of(folder),
                 folder.parent.name if label_from_dir else None, _split_of(folder, root))


def _file_scene(path: Path, root: Path, order: Sequence[str], bands: Sequence[str],
                label_from_dir: bool) -> Scene:
    missing = [b for b in bands if b not in order]
    if missing:
        raise BandError(
            f"{path}: the band order {list(order)} has no band(s) {', '.join(missing)}; pass "
            "--band-order naming the file's bands or select fewer bands with --bands"
        )
    sources = tuple(BandSource(b, str(path), order.index(b) + 1) for b in bands)
    return Scene(_scene_id(path), sources, _date_of(path),
                 path.parent.name if label_from_dir else None, _split_of(path, root))
