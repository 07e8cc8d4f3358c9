"""Moved to :mod:`rsmae.models.change`; the old name works for one release."""

import warnings

from rsmae.models.change import *  # noqa: F403
from rsmae.models.change import __all__  # noqa: F401

warnings.warn("rsmae.evaluation.change_model moved to rsmae.models.change", DeprecationWarning, stacklevel=2)
