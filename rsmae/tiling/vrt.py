"""GDAL VRT inputs stay inside their folder unless the user opts in.

A ``.vrt`` is an XML file that tells GDAL to read other rasters: any local file, or a URL through
``/vsicurl/``. Tiled without a look, a VRT handed over with a dataset could pull files from
anywhere on the machine, or from the network, into a store. :func:`check_vrt` reads the XML and
refuses a VRT whose sources (followed through nested VRTs) lie outside its own folder, are GDAL
virtual file systems, or that runs code (Python pixel functions).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from rsmae.errors import RasterReadError

__all__ = ["check_vrt"]

_SOURCE_TAGS = ("SourceFilename", "SourceDataset")
_MAX_DEPTH = 8


def _sources(vrt: Path) -> list[str]:
    """Every file a VRT names, as GDAL resolves it (``relativeToVRT`` against the VRT's folder)."""
    try:
        root = ET.parse(vrt).getroot()
    except (ET.ParseError, OSError) as err:
        raise RasterReadError(f"{vrt}: not a readable VRT ({err}); fix or remove the file") from err
    if any((e.text or "").strip().lower() == "python" for e in root.iter("PixelFunctionLanguage")):
        raise RasterReadError(f"{vrt}: the VRT runs Python pixel functions; rsmae does not run code "
                              "from input files: make a GeoTIFF of it first")
    found = []
    for tag in _SOURCE_TAGS:
        for element in root.iter(tag):
            name = (element.text or "").strip()
            if not name:
                continue
            relative = element.get("relativeToVRT", "0") == "1" or element.get("relativetoVRT") == "1"
            if name.startswith("/vsi") or "://" in name:
                found.append(name)
            else:
                found.append(str(vrt.parent / name) if relative else name)
    return found


def check_vrt(vrt: str | Path, *, allow_outside: bool = False, _depth: int = 0) -> None:
    """Refuse a VRT that reads outside its folder (unless ``allow_outside``).

    Args:
        vrt: The ``.vrt`` file.
        allow_outside: Accept sources anywhere (the user trusts the file): only the code check
            remains.

    Raises:
        RasterReadError: naming the VRT, the offending source and the fix.
    """
    vrt = Path(vrt)
    folder = os.path.realpath(vrt.parent)
    for source in _sources(vrt):
        virtual = source.startswith("/vsi") or "://" in source
        resolved = source if virtual else os.path.realpath(source)
        inside = not virtual and os.path.commonpath([folder, resolved]) == folder
        if not (inside or allow_outside):
            raise RasterReadError(
                f"{vrt}: the VRT reads {source}, outside its folder {vrt.parent}"
                f"{' (a GDAL virtual file system: network or archive)' if virtual else ''}; "
                "rsmae reads only files beside a VRT unless you pass --allow-vrt-outside")
        if not virtual and resolved.lower().endswith(".vrt") and _depth < _MAX_DEPTH:
            check_vrt(resolved, allow_outside=allow_outside, _depth=_depth + 1)
