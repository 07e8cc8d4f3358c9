"""The scenes a tile store does not hold because they failed: the ``skipped`` table and ``unit_skip``.

Layout (in a tile store of format 2)::

    STORE.zarr/skipped/
      id, file, reason (n,) string   scene id, its first file, the error (unreadable or damaged
                                     file, no kept tile)
      batch (n,) int64               the run that last tried the scene
      row   (n,) int64               its row in the scene table (-1: never registered)
    STORE.zarr/unit_skip (units,) string
                                     JSON ``{scene index: reason}`` of the scenes a unit of work
                                     left out, "" when none

The table is rewritten by each run (a scene tiled later leaves it); the per-unit records are what
parallel writers leave, gathered when a run finishes. Stores made before skipped scenes were
recorded lack both: they read as empty and are created on the next append.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

__all__ = ["COLUMNS", "create_unit_skip", "read_skipped", "read_unit_skips", "unit_skip_record",
           "write_skipped"]

COLUMNS = ("id", "file", "reason", "batch", "row")
_TEXT = ("id", "file", "reason")  # the other columns are int64


def _dtype(name: str) -> np.dtype:
    return np.dtypes.StringDType() if name in _TEXT else np.dtype(np.int64)


def create_unit_skip(group: zarr.Group) -> None:
    """Create the empty ``unit_skip`` array in ``group`` unless it has one (stores made before it)."""
    if "unit_skip" not in group:
        group.create_array("unit_skip", shape=(0,), chunks=(1,), dtype=str, fill_value="")


def read_skipped(group: zarr.Group | None) -> dict[str, np.ndarray]:
    """The ``skipped`` table of the store ``group``: its :data:`COLUMNS` (empty when it has none)."""
    if group is None or "skipped" not in group:
        return {name: np.zeros(0, dtype=_dtype(name)) for name in COLUMNS}
    table = group["skipped"]
    return {name: table[name][:] for name in COLUMNS}


def write_skipped(group: zarr.Group, table: dict[str, Sequence[Any]]) -> None:
    """Replace the ``skipped`` table of ``group`` by ``table`` (columns as :func:`read_skipped` gives)."""
    if "skipped" not in group:
        created = group.create_group("skipped")
        for name in COLUMNS:
            text = name in _TEXT
            created.create_array(name, shape=(0,), chunks=(4096,), dtype=str if text else "int64",
                                 fill_value="" if text else -1)
    skipped = group["skipped"]
    for name in COLUMNS:
        values = np.asarray(table[name], dtype=_dtype(name))
        skipped[name].resize((len(values),))
        if len(values):
            skipped[name][:] = values


def unit_skip_record(skipped: dict[int, str] | None) -> str:
    """The ``unit_skip`` entry of a unit that left out ``skipped`` (scene index -> reason)."""
    return json.dumps({str(k): v for k, v in sorted(skipped.items())}) if skipped else ""


def read_unit_skips(records: Sequence[str]) -> dict[int, str]:
    """Scene index -> reason from ``unit_skip`` entries, in unit order (the first reason kept)."""
    out: dict[int, str] = {}
    for text in records:
        if text:
            for scene, reason in json.loads(text).items():
                out.setdefault(int(scene), reason)
    return out
