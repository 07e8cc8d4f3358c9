"""Loss landscapes and flatness of MAE, RC-MAE, probed and supervised ViTs.

Thin wrapper of rsmae/cli/landscape.py: the command ``rsmae landscape``.
"""

import sys

from rsmae.cli.landscape import main

if __name__ == "__main__":
    sys.exit(main())
