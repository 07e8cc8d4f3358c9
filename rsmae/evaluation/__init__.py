"""Transfer evaluation: protocols (kNN, linear probe, last-k and full fine-tuning), change detection.

Imports :mod:`rsmae.models`, :mod:`rsmae.data` and :mod:`rsmae.datasets`; never pipelines or
benchmarks.
"""

from rsmae.models.trainable import configure_trainable, count_trainable, freeze_eval, parse_tune

__all__ = ["configure_trainable", "count_trainable", "freeze_eval", "parse_tune"]
