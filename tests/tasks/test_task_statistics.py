"""The one rule of normalisation statistics: the backbone's when they fit, else the training split's."""

from __future__ import annotations

from rsmae.tasks.statistics import backbone_or_training_statistics


def test_backbone_statistics_else_the_training_splits() -> None:
    calls: list[int] = []

    def training() -> tuple[list[float], list[float]]:
        calls.append(1)
        return [5.0], [2.0]

    assert backbone_or_training_statistics([1.0], [3.0], training) == ([1.0], [3.0], False) and not calls
    assert backbone_or_training_statistics(None, None, training) == ([5.0], [2.0], True)
    assert backbone_or_training_statistics([1.0], None, training) == ([5.0], [2.0], True)
    assert backbone_or_training_statistics([1.0], [3.0], training, usable=False) == ([5.0], [2.0], True)
    assert len(calls) == 3  # computed only when used
