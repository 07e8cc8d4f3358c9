"""Print a summary of tile stores: tiles, bands, per-band statistics, scenes, size.

Thin wrapper of rsmae/cli/inspect_store.py: the command ``rsmae inspect``.
"""

import sys

from rsmae.cli.inspect_store import main

if __name__ == "__main__":
    sys.exit(main())
