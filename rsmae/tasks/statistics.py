"""Normalisation statistics: the backbone's when they fit the data, else the training split's.

Every task normalises its inputs with per-band statistics. The statistics travelling with a backbone
(or the pretraining data) are used when they exist and describe the data at hand; otherwise they are
computed from the task's training split, never from validation or test data. Callers say when the
backbone's statistics do not fit (another sensor's product, other processing) and how the training
split's are computed (in memory, or streamed chunk by chunk), and record which were used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["backbone_or_training_statistics"]

S = TypeVar("S")


def backbone_or_training_statistics(mean: Any, std: Any, training: Callable[[], tuple[S, S]], *,
                                    usable: bool = True) -> tuple[Any, Any, bool]:
    """``(mean, std, from_training)``: the given statistics, else ``training()``'s.

    Args:
        mean: Per-band mean of the backbone (or pretraining data); ``None`` when it has none.
        std: Per-band standard deviation, same order; ``None`` when it has none.
        training: Computes ``(mean, std)`` of the training split; called only when needed.
        usable: Whether the given statistics describe this data (same sensor and processing).

    Returns:
        The statistics and whether they are the training split's (to be logged and recorded).
    """
    if usable and mean is not None and std is not None:
        return mean, std, False
    train_mean, train_std = training()
    return train_mean, train_std, True
