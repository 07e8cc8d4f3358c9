"""Export the encoder of a pretraining checkpoint as a backbone file (weights + bands + statistics).

Thin wrapper of rsmae/cli/export.py: the command ``rsmae export``.
"""

import sys

from rsmae.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
