"""Moved to :mod:`rsmae.models.trainable`; the old name works for one release."""

import warnings

from rsmae.models.trainable import *  # noqa: F403
from rsmae.models.trainable import __all__  # noqa: F401

warnings.warn("rsmae.evaluation.trainable moved to rsmae.models.trainable", DeprecationWarning, stacklevel=2)
