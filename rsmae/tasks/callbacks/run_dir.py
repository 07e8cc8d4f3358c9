"""Where a run's callbacks write."""

from __future__ import annotations

from pathlib import Path

import lightning as L

__all__ = ["run_dir"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (the first logger's), else the trainer's root folder.

    ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it): call it on every rank,
    e.g. in ``setup``, never behind a rank check.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)
