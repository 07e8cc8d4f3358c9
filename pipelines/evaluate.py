"""Score one backbone with one transfer protocol on one dataset (scene classification or change).

Thin wrapper of rsmae/cli/evaluate.py: the command ``rsmae evaluate``.
"""

import sys

from rsmae.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
