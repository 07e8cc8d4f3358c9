"""Tile multispectral scenes into a sharded Zarr v3 store (exit 0 done, 2 error, 3 scenes skipped).

Thin wrapper of rsmae/cli/tile.py: the command ``rsmae tile``.
"""

import sys

from rsmae.cli.tile import main

if __name__ == "__main__":
    sys.exit(main())
