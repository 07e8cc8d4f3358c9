"""Errors of whole-scene prediction (under :class:`~rsmae.errors.RsmaeError`)."""

from __future__ import annotations

from rsmae.errors import RsmaeError

__all__ = ["PredictError"]


class PredictError(RsmaeError, ValueError):
    """A prediction input cannot be used: dates that do not overlap, a model of another task."""
