"""Summarise a pretraining run: loss and probe-accuracy curves, and the files it wrote.

Thin wrapper of rsmae/cli/report.py: the command ``rsmae report``.
"""

import sys

from rsmae.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
