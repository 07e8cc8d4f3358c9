"""``python -m rsmae``: the ``rsmae`` command."""

import sys

from rsmae.cli import main

if __name__ == "__main__":
    sys.exit(main())
