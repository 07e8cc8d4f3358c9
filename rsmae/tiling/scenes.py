"""Scene discovery: turn input paths into scenes whose bands are known by name.

A scene is either one multi-band raster (bands named by a layout) or a folder of single-band
rasters (Sentinel-2 style, band name in each file name, mixed resolutions allowed). Products as
delivered are folders too (:mod:`rsmae.tiling.products`): a ``.SAFE`` granule (L2A's ``R10m``/
``R20m``/``R60m`` folders form one scene, each band at its native resolution) or a Landsat
Collection folder; rasters in them that are not bands (TCI, SCL, QA_PIXEL, angles, band copies
at another resolution) are skipped and listed in one log line.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsmae.bands import Sensor, band_from_filename, get_layout, pick_band_files, raster_kind
from rsmae.errors import BandError, InputNotFoundError
from rsmae.tiling.band_order import file_band_order
from rsmae.tiling.products import (
    check_product_levels,
    is_resolution_folder,
    product_info,
    product_scene_name,
    prune_product_folders,
)
from rsmae.tiling.vrt import check_vrt

__all__ = ["RASTER_SUFFIXES", "BandSource", "Scene", "discover_scenes"]

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".png")
_SPLITS = ("train", "val", "validation", "test")
log = logging.getLogger(__name__)
_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass(frozen=True)
class BandSource:
    """Where one band of a scene is read from.

    Attributes:
        band: Canonical band name.
        path: Raster file.
        index: 1-based band index inside the file.
        offset: Additive radiometric offset the product declares for this band (``-1000`` for
            Sentinel-2 baseline >= 04.00); applied when the band is read.
    """

    band: str
    path: str
    index: int
    offset: float = 0.0


@dataclass(frozen=True)
class Scene:
    """One scene: a set of band sources on (roughly) one footprint.

    Attributes:
        scene_id: Unique, stable id: ``parent/name`` of the file (no suffix) or folder.
        sources: One source per store band, in store band order.
        date: Acquisition date ``YYYY-MM-DD`` when known.
        label: Class name (the parent folder) when labels are taken from folders.
        split: ``train``/``val``/``test`` when the path holds such a folder.
        product_level: Sentinel-2 ``"L1C"``/``"L2A"`` from the product metadata or names, else
            ``None``.
        baseline: Processing baseline from the product metadata (``"04.00"``), else ``None``.
    """

    scene_id: str
    sources: tuple[BandSource, ...]
    date: str | None = None
    label: str | None = None
    split: str | None = None
    product_level: str | None = None
    baseline: str | None = None

    @property
    def files(self) -> list[str]:
        """Distinct files of the scene, in band order."""
        return list(dict.fromkeys(s.path for s in self.sources))

    @property
    def offset(self) -> tuple[float, ...]:
        """Additive radiometric offset per band (store band order); all 0 when none declared."""
        return tuple(s.offset for s in self.sources)

    @property
    def has_offset(self) -> bool:
        """Whether any band carries a radiometric offset."""
        return any(s.offset for s in self.sources)


def _is_raster(path: Path | str) -> bool:
    """A raster by suffix, or a raw ENVI file (a ``.hdr`` header beside it)."""
    suffix = os.path.splitext(path)[1]
    if suffix.lower() in RASTER_SUFFIXES:
        return True
    return not suffix and any(os.path.isfile(f"{path}{h}") for h in (".hdr", ".HDR"))


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
            if path.is_symlink() and not path.exists():
                _check_link(path)
            if not path.exists():
                raise InputNotFoundError(f"{item}: no such file or folder")
            out.append((path, path.parent))
    return out


def _date_of(path: Path, *, is_file: bool | None = None) -> str | None:
    """Acquisition date: a ``dates.txt`` beside an ``imgs_N`` folder (OSCD), else the name."""
    folder = path.parent if (path.is_file() if is_file is None else is_file) else path
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
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:  # a product folder above the input (an IMG_DATA folder given directly)
        return None
    for part in parts:
        if part.lower() in _SPLITS:
            return "val" if part.lower() == "validation" else part.lower()
    return None


def _scene_id(path: Path, *, is_file: bool | None = None) -> str:
    """``parent/name`` (suffix dropped) of the path as given: stable whichever way it was named.

    The path is made absolute (``.`` and ``..`` removed) without following symlinks: in DVC and
    git-annex symlink farms the link name is the scene's name (two links to one file are two
    scenes; an annexed file is not named by its content hash). Pixels are still read from the
    link's target.
    """
    parent, name = os.path.split(os.path.abspath(path))
    if path.is_file() if is_file is None else is_file:
        stem, suffix = os.path.splitext(name)
        name = stem if suffix and stem else name
    return f"{os.path.basename(parent)}/{name}"


def _band_folder(
    folder: Path, files: list[Path], sensor: Sensor
) -> tuple[dict[str, Path], list[Path]] | None:
    """Map bands to files when the folder's rasters name at least two bands of the sensor.

    Returns:
        ``(band -> file, skipped files)``, or ``None`` for a folder of multi-band files.

    Raises:
        BandError: two files hold one band at its native resolution (two scenes in one folder).
    """
    chosen, skipped, clashes = pick_band_files(files, sensor)
    if len(chosen) < 2:
        return None
    if clashes:
        band, first, second = clashes[0]
        raise BandError(
            f"{folder}: two files hold band {band} at its native resolution ({first.name}, "
            f"{second.name}); keep each scene's band files in a folder of its own"
        )
    return chosen, skipped


def _walk(path: Path) -> list[tuple[Path, list[Path]]]:
    """Folders under ``path`` (itself included) with the raster files directly inside them.

    Symlinked folders are followed (not into a loop); a product's mask and banner folders are
    left out, and ``R10m``/``R20m``/``R60m`` folders count as their parent's.

    Raises:
        InputNotFoundError: a raster is a symlink to a missing file (content not fetched).
    """
    found: dict[Path, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        here = Path(dirpath)
        dirnames.sort()
        prune_product_folders(here, dirnames)
        real = os.path.realpath(here) + os.sep
        dirnames[:] = [d for d in dirnames if not (
            os.path.islink(here / d) and real.startswith(os.path.realpath(here / d) + os.sep))]
        rasters = [here / f for f in sorted(filenames) if _is_raster(os.path.join(dirpath, f))]
        for f in rasters:
            _check_link(f)
        if rasters:
            found.setdefault(here.parent if is_resolution_folder(here) else here, []).extend(rasters)
    return list(found.items())


def _check_link(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise InputNotFoundError(
            f"{path}: symlink to a missing file ({os.readlink(path)}); fetch the content first "
            "(git annex get, dvc pull) or leave the file out"
        )


def discover_scenes(
    inputs: Sequence[str],
    sensor: Sensor,
    bands: Sequence[str],
    *,
    band_order: Sequence[str] | str | None = None,
    label_from_dir: bool = False,
    mix_product_levels: bool = False,
    known_files: Container[str] = frozenset(),
    allow_vrt_outside: bool = False,
) -> list[Scene]:
    """Find scenes in files, folders, product folders (``.SAFE``, Landsat) and globs.

    Args:
        inputs: Files, folders or glob patterns.
        sensor: Sensor of the data.
        bands: Canonical names of the bands to keep, in store order.
        band_order: Band order inside multi-band files (a layout name or names); default: each
            file's band descriptions (a file of more than three bands without them is refused).
        label_from_dir: Take each scene's class label from its parent folder name.
        mix_product_levels: Accept Sentinel-2 L1C and L2A scenes together.
        known_files: Single-file scenes a store already holds (paths as given): left out without
            being parsed, so a re-run that passes every earlier input again costs only the walk.
        allow_vrt_outside: Accept ``.vrt`` inputs that read files outside their folder or over
            the network (:func:`rsmae.tiling.vrt.check_vrt`).

    Returns:
        Scenes sorted by id.

    Raises:
        InputNotFoundError: a path is missing, a glob matches nothing, or no raster was found.
        BandError: a scene lacks one of ``bands``, or ids collide.
        TilingError: L1C and L2A scenes are mixed and ``mix_product_levels`` is false.
    """
    order = _resolve_order(band_order, sensor)
    scenes: dict[str, Scene] = {}
    skipped: list[Path] = []
    for path, root in _expand(inputs):
        for scene in _scenes_in(path, root, sensor, order, bands, label_from_dir, skipped, known_files):
            if scene.scene_id in scenes and scenes[scene.scene_id] != scene:
                raise BandError(
                    f"{scene.files[0]}: scene id {scene.scene_id!r} (parent/name) is taken by "
                    f"{scenes[scene.scene_id].files[0]}; rename one or tile them separately")
            scenes[scene.scene_id] = scene
    _log_skipped(skipped, sensor)
    for vrt in sorted({src.path for s in scenes.values() for src in s.sources
                       if src.path.lower().endswith(".vrt")}):
        check_vrt(vrt, allow_outside=allow_vrt_outside)
    check_product_levels({s.files[0]: s.product_level for s in scenes.values()},
                         allow_mixed=mix_product_levels)
    return [scenes[k] for k in sorted(scenes)]


def _scenes_in(path: Path, root: Path, sensor: Sensor, order: tuple[str, ...] | None,
               bands: Sequence[str],
               label_from_dir: bool, skipped: list[Path], known_files: Container[str]) -> list[Scene]:
    """The scenes of one input path; non-band rasters of band folders are added to ``skipped``."""
    if path.is_file():
        return [] if str(path) in known_files else [_file_scene(path, root, order, bands, sensor,
                                                                label_from_dir)]
    entries = _walk(path)
    if not entries:
        raise InputNotFoundError(f"{path}: no raster files ({', '.join(RASTER_SUFFIXES)}) in this folder")
    made = []
    for folder, files in entries:
        found = _band_folder(folder, files, sensor)
        if found is None:
            made.extend(_file_scene(f, root, order, bands, sensor, label_from_dir) for f in files
                        if str(f) not in known_files)
        else:
            made.append(_folder_scene(folder, root, found[0], bands, sensor, label_from_dir))
            skipped.extend(found[1])
    return made


def _log_skipped(skipped: list[Path], sensor: Sensor) -> None:
    """One line for every raster of the band folders that is not a band at its native resolution."""
    if not skipped:
        return
    kinds: dict[str, int] = {}
    for f in skipped:
        kind = "band copies at another resolution" if band_from_filename(f, sensor) else raster_kind(f)
        kinds[kind] = kinds.get(kind, 0) + 1
    log.warning("skipped %d raster(s) that are not bands of %s at their native resolution: %s "
                "(e.g. %s)", len(skipped), sensor.name,
                ", ".join(f"{k} ({n})" for k, n in sorted(kinds.items())), skipped[0])


def _resolve_order(band_order: Sequence[str] | str | None, sensor: Sensor) -> tuple[str, ...] | None:
    """The user's band order in canonical names; ``None``: each file's own (its descriptions)."""
    if band_order is None:
        return None
    if isinstance(band_order, str):
        return get_layout(band_order, sensor)
    return sensor.resolve(band_order)




def _folder_scene(folder: Path, root: Path, per_band: dict[str, Path], bands: Sequence[str],
                  sensor: Sensor, label_from_dir: bool) -> Scene:
    missing = [b for b in bands if b not in per_band]
    if missing:
        raise BandError(
            f"{folder}: scene has no file for band(s) {', '.join(missing)} (found "
            f"{', '.join(sorted(per_band))}); add the files or select fewer bands with --bands"
        )
    info = product_info(folder, sensor, per_band[bands[0]] if bands else None)
    named = product_scene_name(folder)
    if named is not None:  # a .SAFE granule: <product>/<granule>, dated and labelled by the product
        scene_id, anchor = "/".join(named), folder.parents[2]
    else:
        scene_id, anchor = _scene_id(folder), folder
    sources = tuple(BandSource(b, str(per_band[b]), 1, info.offsets.get(b, 0.0)) for b in bands)
    return Scene(scene_id, sources, _date_of(anchor), anchor.parent.name if label_from_dir else None,
                 _split_of(anchor, root), info.level, info.baseline)


def _file_scene(path: Path, root: Path, order: Sequence[str] | None, bands: Sequence[str],
                sensor: Sensor, label_from_dir: bool) -> Scene:
    if order is None:
        order = file_band_order(str(path), sensor)
    missing = [b for b in bands if b not in order]
    if missing:
        raise BandError(
            f"{path}: the band order {list(order)} has no band(s) {', '.join(missing)}; pass "
            "--band-order naming the file's bands or select fewer bands with --bands"
        )
    info = product_info(path.parent, sensor, path)
    sources = tuple(BandSource(b, str(path), order.index(b) + 1, info.offsets.get(b, 0.0))
                    for b in bands)
    return Scene(_scene_id(path, is_file=True), sources, _date_of(path, is_file=True),
                 path.parent.name if label_from_dir else None, _split_of(path, root), info.level,
                 info.baseline)
