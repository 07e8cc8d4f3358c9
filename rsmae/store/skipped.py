"""The scenes a tile store does not hold because they failed: the ``skipped`` table and ``unit_skip``.

Layout (in a tile store of format 2)::

    STORE.zarr/skipped_<g>/          the table of generation g, named by the root attribute
                                     ``skipped_table`` (stores made before generations: ``skipped``)
      id, file, reason (n,) string   scene id, its first file, the error (unreadable or damaged
                                     file, no kept tile)
      batch (n,) int64               the run that last tried the scene
      row   (n,) int64               its row in the scene table (-1: never registered)
      stamp (n,) string              size and modification time of the scene's files when it was
                                     tried ("" in older tables): unchanged files are not retried
    STORE.zarr/unit_skip (units,) string
                                     JSON ``{scene index: reason}`` of the scenes a unit of work
                                     left out, "" when none

A run that changes the table writes a new generation beside the current one, then names it in the
same root-attribute write that commits the run, then deletes the old one: a kill at any moment
leaves the committed table whole. The per-unit records are what parallel writers leave, gathered
when a run finishes. Stores made before skipped scenes were recorded lack both: they read as empty
and are created on the next append.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zarr

__all__ = ["COLUMNS", "SkippedTableMixin", "create_unit_skip", "drop_stale_tables", "read_skipped",
           "read_unit_skips", "unit_skip_record", "write_skipped"]

COLUMNS = ("id", "file", "reason", "batch", "row", "stamp")
_TEXT = ("id", "file", "reason", "stamp")  # the other columns are int64
_ATTR = "skipped_table"  # root attribute naming the committed table
_PREFIX = "skipped_"


def _dtype(name: str) -> np.dtype:
    return np.dtypes.StringDType() if name in _TEXT else np.dtype(np.int64)


def create_unit_skip(group: zarr.Group) -> None:
    """Create the empty ``unit_skip`` array in ``group`` unless it has one (stores made before it)."""
    if "unit_skip" not in group:
        group.create_array("unit_skip", shape=(0,), chunks=(1,), dtype=str, fill_value="")


def _current(group: zarr.Group) -> str:
    return str(group.attrs.get(_ATTR, "skipped"))


def read_skipped(group: zarr.Group | None) -> dict[str, np.ndarray]:
    """The committed ``skipped`` table of the store ``group``: its :data:`COLUMNS` (empty when none)."""
    name = _current(group) if group is not None else ""
    if group is None or name not in group:
        return {column: np.zeros(0, dtype=_dtype(column)) for column in COLUMNS}
    table = group[name]
    n = table["id"].shape[0]
    return {column: table[column][:] if column in table else  # "stamp" came later
            np.zeros(n, dtype=_dtype(column)) for column in COLUMNS}


def write_skipped(group: zarr.Group, table: dict[str, Sequence[Any]]) -> dict[str, str]:
    """Write ``table`` as the next generation of the ``skipped`` table, not yet committed.

    Args:
        group: The store's root group.
        table: Columns as :func:`read_skipped` gives.

    Returns:
        The root attribute that makes it the committed table: write it with the commit, then
        call :func:`drop_stale_tables`.
    """
    current = _current(group)
    generation = int(current.removeprefix(_PREFIX)) + 1 if current.startswith(_PREFIX) else 1
    name = f"{_PREFIX}{generation}"
    if name in group:  # left by a run killed before its commit
        del group[name]
    created = group.create_group(name)
    for column in COLUMNS:
        values = np.asarray(table[column], dtype=_dtype(column))
        text = column in _TEXT
        array = created.create_array(column, shape=(len(values),), chunks=(4096,),
                                     dtype=str if text else "int64", fill_value="" if text else -1)
        if len(values):
            array[:] = values
    return {_ATTR: name}


def drop_stale_tables(group: zarr.Group) -> None:
    """Delete every ``skipped`` table but the committed one (after a commit, or a killed run)."""
    current = _current(group)
    for name in [n for n, _ in group.groups() if (n == "skipped" or n.startswith(_PREFIX))
                 and n != current]:
        del group[name]


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


class SkippedTableMixin:
    """The methods of :class:`~rsmae.store.TileStore` that read and write the ``skipped`` table.

    :class:`~rsmae.store.TileStore` inherits them; it provides ``_group`` (the root group),
    ``format`` and ``array``.
    """

    _group: zarr.Group
    format: int
    array: Callable[[str], zarr.Array]

    def unit_skips(self, start: int, stop: int) -> dict[int, str]:
        """Scenes left out by units ``start:stop`` (scene index -> reason), in unit order."""
        if stop <= start or "unit_skip" not in self._group:
            return {}
        return read_unit_skips(self.array("unit_skip")[start:stop].tolist())

    def skipped(self) -> dict[str, np.ndarray]:
        """The committed ``skipped`` table: its :data:`COLUMNS` (empty when none)."""
        return read_skipped(self._group if self.format >= 2 else None)

    def write_skipped(self, table: dict[str, Sequence[Any]]) -> dict[str, str]:
        """Write the next ``skipped`` table (columns as :meth:`skipped` returns), not yet visible.

        Returns:
            The root attribute that commits it (pass it to :meth:`update_attrs` with the commit,
            then call :meth:`drop_stale_skipped`).
        """
        return write_skipped(self._group, table)

    def drop_stale_skipped(self) -> None:
        """Delete the ``skipped`` tables that are not the committed one."""
        drop_stale_tables(self._group)
