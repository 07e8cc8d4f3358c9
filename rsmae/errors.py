"""Errors raised by rsmae.

Every error subclasses :class:`RsmaeError` and the matching builtin, so callers can catch either
(``except FileNotFoundError`` keeps working). Messages name the offending path or value and say how
to fix it.
"""

from __future__ import annotations

__all__ = [
    "BandError",
    "CheckpointError",
    "EvaluationLeakError",
    "GridError",
    "InputNotFoundError",
    "LandscapeError",
    "ModelConfigError",
    "NonFiniteLossError",
    "RasterReadError",
    "RsmaeError",
    "StoreConfigError",
    "StoreError",
    "StoreIncompleteError",
    "StoreLockedError",
    "StoreRunChangedError",
    "TilingError",
    "WeightsError",
]


class RsmaeError(Exception):
    """Root of every error rsmae raises on purpose."""


class InputNotFoundError(RsmaeError, FileNotFoundError):
    """An input path does not exist or a glob matched nothing."""


class RasterReadError(RsmaeError, ValueError):
    """A file could not be read as a raster (not a raster, truncated, unsupported dtype)."""


class BandError(RsmaeError, ValueError):
    """Bands are unknown, missing, duplicated or do not match what was expected."""


class GridError(RsmaeError, ValueError):
    """Band files of one scene disagree on CRS or extent, or a grid cannot be built."""


class TilingError(RsmaeError, ValueError):
    """Tiling parameters are invalid or a scene cannot be tiled (too small, all nodata)."""


class StoreError(RsmaeError, ValueError):
    """A tile store is missing, unreadable or not a tile store."""


class EvaluationLeakError(StoreError):
    """A pretraining store holds an image that an evaluation scores on."""


class StoreConfigError(StoreError):
    """An existing store was made with another configuration."""


class StoreIncompleteError(StoreError):
    """A store has not been finalised (a tiling run was interrupted)."""


class StoreLockedError(StoreError, BlockingIOError):
    """Another process (named by host and pid) holds the store's write lock."""


class StoreRunChangedError(StoreError):
    """A unit of work belongs to a run that no longer owns the store (rolled back or taken over)."""


class WeightsError(RsmaeError, ValueError):
    """Weights could not be loaded or do not fit the model."""


class NonFiniteLossError(RsmaeError, ArithmeticError):
    """The training loss became NaN or infinite."""


class LandscapeError(RsmaeError, ValueError):
    """A loss-landscape input is inconsistent (directions and weights differ, bad grid or config)."""


class CheckpointError(WeightsError):
    """A training checkpoint is missing, unreadable, of another kind or of another model."""


class ModelConfigError(RsmaeError, ValueError):
    """A model option is invalid (unknown preset or method)."""
