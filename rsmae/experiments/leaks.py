"""No evaluation image in a pretraining corpus: every file under the evaluation folders vs the stores.

A thin layer over :func:`rsmae.datasets.check_no_eval_images` (the library's check: each file a
store's scenes were read from is compared with the evaluation images by resolved path, then by bytes
for files of equal size, so a renamed copy is caught too). Here the evaluation images are *every*
file under whole evaluation folders (``eurosat_ms_subset/`` with both splits, ``oscd_subset/``),
which is what the transfer benchmark needs: none of them may be in a pretraining corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsmae.datasets import check_no_eval_images
from rsmae.datasets.leakage import scene_files
from rsmae.errors import InputNotFoundError

__all__ = ["check_no_leaks", "evaluation_files"]


def evaluation_files(roots: Sequence[Path]) -> list[Path]:
    """Every file under the evaluation folders, resolved.

    Raises:
        InputNotFoundError: an evaluation folder is missing or empty (a check against nothing
            proves nothing).
    """
    files = []
    for root in roots:
        found = [p.resolve() for p in Path(root).rglob("*") if p.is_file()]
        if not found:
            raise InputNotFoundError(f"{root}: no evaluation files there; pass the folder holding "
                                     "the evaluation images")
        files.extend(found)
    return files


def check_no_leaks(stores: Sequence[Path], eval_roots: Sequence[Path]) -> dict[str, Any]:
    """Refuse pretraining stores holding any file of the evaluation folders; return what was compared.

    Raises:
        EvaluationLeakError: naming the first leaked file, its scene and store.
        InputNotFoundError: an evaluation folder is missing or empty.
    """
    files = evaluation_files(eval_roots)
    check_no_eval_images(stores, files, by_content=True)
    return {"eval_roots": [str(r) for r in eval_roots], "eval_files": len(files),
            "store_files": sum(len(scene_files(s)) for s in stores), "leaks": 0,
            "compared_by": "rsmae.datasets.check_no_eval_images: resolved path, then bytes of "
                           "equal-size files"}

