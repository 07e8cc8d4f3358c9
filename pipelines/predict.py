"""Whole-scene prediction: embeddings, change and class maps as COGs (exit 0 done, 2 error).

Thin wrapper of rsmae/cli/predict.py: the command ``rsmae predict``.
"""

import sys

from rsmae.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
