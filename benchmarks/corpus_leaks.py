"""No evaluation image in a pretraining corpus: compare tile stores' scene files with evaluation files.

A tile store records, per scene, the files it was read from (``attrs["scenes"][i]["files"]``, see
:mod:`rsmae.store`). Each is compared with every file under the evaluation folders: by resolved path
(the same file, whichever way it was named), then by content (SHA-256, only for files of equal size),
so a copy of an evaluation image elsewhere is caught too.

Example::

    python benchmarks/corpus_leaks.py runs/transfer/stores/s2_l1c.zarr \
        --eval ../shared/data/eurosat_ms_subset ../shared/data/oscd_subset
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsmae.errors import RsmaeError, StoreError
from rsmae.store import TileStore

__all__ = ["check_no_leaks", "evaluation_files", "find_leaks", "sha256", "store_files"]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_files(store: Path) -> list[tuple[str, Path]]:
    """(scene id, resolved file) of every file the store's scenes were read from."""
    scenes = TileStore.open(store).attrs["scenes"]
    return [(s["id"], Path(f).resolve()) for s in scenes for f in s["files"]]


def evaluation_files(roots: Sequence[Path]) -> list[Path]:
    """Every file under the evaluation folders, resolved.

    Raises:
        StoreError: an evaluation folder is missing or empty (a check against nothing proves nothing).
    """
    files = []
    for root in roots:
        found = [p.resolve() for p in Path(root).rglob("*") if p.is_file()]
        if not found:
            raise StoreError(f"{root}: no evaluation files there; pass the folder holding the "
                             "evaluation images")
        files.extend(found)
    return files


def _matching(path: Path, by_path: set[Path], by_size: dict[int, list[Path]],
              hashes: dict[Path, str]) -> Path | None:
    """The evaluation file that is ``path`` (same resolved path) or has its bytes, else None."""
    if path in by_path:
        return path
    if not path.is_file():
        return None
    for other in by_size.get(path.stat().st_size, []):
        for p in (path, other):
            if p not in hashes:
                hashes[p] = sha256(p)
        if hashes[path] == hashes[other]:
            return other
    return None


def find_leaks(stores: Sequence[Path], eval_roots: Sequence[Path]) -> list[dict[str, str]]:
    """Scene files of ``stores`` that are evaluation files: the same resolved path or the same bytes.

    Returns:
        One ``{"store", "scene", "file", "evaluation_file"}`` per match (empty when clean).
    """
    evaluation = evaluation_files(eval_roots)
    by_path = set(evaluation)
    by_size: dict[int, list[Path]] = {}
    for path in evaluation:
        by_size.setdefault(path.stat().st_size, []).append(path)
    hashes: dict[Path, str] = {}
    leaks = []
    for store in stores:
        for scene, path in store_files(store):
            match = _matching(path, by_path, by_size, hashes)
            if match is not None:
                leaks.append({"store": str(store), "scene": scene, "file": str(path),
                              "evaluation_file": str(match)})
    return leaks


def check_no_leaks(stores: Sequence[Path], eval_roots: Sequence[Path]) -> dict[str, Any]:
    """Refuse pretraining stores holding an evaluation image; return what was compared.

    Raises:
        StoreError: naming the first leaked file, its scene and store.
    """
    leaks = find_leaks(stores, eval_roots)
    if leaks:
        first = leaks[0]
        raise StoreError(f"{first['file']}: scene {first['scene']} of pretraining store {first['store']} is "
                         f"the evaluation file {first['evaluation_file']} ({len(leaks)} such file(s)); "
                         "rebuild the store without the evaluation images")
    return {"eval_roots": [str(r) for r in eval_roots], "eval_files": len(evaluation_files(eval_roots)),
            "store_files": sum(len(store_files(s)) for s in stores), "leaks": 0,
            "compared_by": "resolved path, then SHA-256 of equal-size files"}


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
