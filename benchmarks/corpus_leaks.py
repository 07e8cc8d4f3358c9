"""No evaluation image in a pretraining corpus: every file under the evaluation folders vs the stores.

The command line of :func:`rsmae.experiments.leaks.check_no_leaks`, a thin layer over
:func:`rsmae.datasets.check_no_eval_images` (the library's check: each file a
store's scenes were read from is compared with the evaluation images by resolved path, then by bytes
for files of equal size, so a renamed copy is caught too). Here the evaluation images are *every*
file under whole evaluation folders (``eurosat_ms_subset/`` with both splits, ``oscd_subset/``),
which is what the transfer benchmark needs: none of them may be in a pretraining corpus.

Example::

    python benchmarks/corpus_leaks.py runs/transfer/stores/s2_l1c.zarr \
        --eval ../shared/data/eurosat_ms_subset ../shared/data/oscd_subset
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsmae.errors import RsmaeError
from rsmae.experiments.leaks import check_no_leaks


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when clean, 2 naming the first leaked file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--eval", nargs="+", type=Path, required=True, help="evaluation folders")
    args = p.parse_args(argv)
    try:
        report = check_no_leaks(args.stores, args.eval)
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"clean: {report['store_files']} scene files, none among {report['eval_files']} evaluation files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
