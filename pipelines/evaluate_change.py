"""Change detection: train (or load) a change model, score whole test scenes by sliding windows.

Thin wrapper of rsmae/cli/evaluate_change.py: the command ``rsmae evaluate --task oscd|levircd|landsat``.
"""

import sys

from rsmae.cli.evaluate_change import main

if __name__ == "__main__":
    sys.exit(main())
