"""Moved to :mod:`rsmae.progress`; re-exported here, so the old imports keep working.

:mod:`rsmae.progress` is in the bottom layer, shared by evaluation, the grids and the landscape study.
"""

from rsmae.progress import *  # noqa: F403
from rsmae.progress import __all__  # noqa: F401
