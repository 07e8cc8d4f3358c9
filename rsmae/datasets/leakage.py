"""No evaluation image in a pretraining corpus.

The evaluation datasets' split files are the one source of truth: a dataset class lists the images
it scores on (e.g. ``EuroSAT(root, "test").paths``), and :func:`check_no_eval_images` compares them
with the files every scene of the pretraining stores was read from (the ``files`` column of
:meth:`~rsmae.store.TileStore.scenes`). Files match when their resolved paths are equal (symlinks and
relative paths followed) or, for files of equal size, when their bytes are (a copy under another name).
Matching uses resolved paths; results and messages name the paths as given (the store's record, the
evaluation file passed in), so a data folder reached through a symbolic link keeps the user's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsmae.errors import EvaluationLeakError
from rsmae.store import TileStore

__all__ = ["EvalImageInStore", "check_no_eval_images", "find_eval_images", "scene_files"]


@dataclass(frozen=True)
class EvalImageInStore:
    """A pretraining scene file that is an evaluation image.

    Attributes:
        store: The pretraining store.
        scene: The scene id in that store.
        file: The scene file, as the store records it (the path given when tiling).
        eval_file: The evaluation image it is, as given; the same file as ``file`` (both resolve
            alike) unless it is a copy.
    """

    store: str
    scene: str
    file: Path
    eval_file: Path


def scene_files(store: str | Path) -> list[tuple[str, Path]]:
    """``(scene id, file as recorded)`` for every file the scenes of a finished store were read from."""
    scenes = TileStore.open(store).scenes(["id", "files"])
    return [(str(i), Path(f)) for i, files in zip(scenes["id"], scenes["files"], strict=True) for f in files]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _EvalIndex:
    """Evaluation images (as given) by resolved path, and by size then hash (hashed on first need)."""

    def __init__(self, eval_files: Iterable[str | Path]) -> None:
        self.paths: dict[Path, Path] = {}  # resolved -> as given (the first given name of a file)
        for given in eval_files:
            self.paths.setdefault(Path(given).resolve(), Path(given))
        self.by_size: dict[int, list[Path]] = {}
        for path in self.paths:
            if path.is_file():
                self.by_size.setdefault(path.stat().st_size, []).append(path)
        self.hashes: dict[Path, str] = {}

    def _hash(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = _sha256(path)
        return self.hashes[path]

    def match(self, path: Path, by_content: bool) -> Path | None:
        """The evaluation image (as given) that the resolved ``path`` is, or a copy of."""
        if path in self.paths:
            return self.paths[path]
        if not by_content or not path.is_file():
            return None
        for other in self.by_size.get(path.stat().st_size, []):
            if self._hash(path) == self._hash(other):
                return self.paths[other]
        return None


def find_eval_images(
    stores: Sequence[str | Path], eval_files: Iterable[str | Path], *, by_content: bool = True
) -> list[EvalImageInStore]:
    """Scene files of ``stores`` that are evaluation images.

    Args:
        stores: Finished tile stores (the pretraining corpus).
        eval_files: The evaluation images, e.g. ``EuroSAT(root, "test").paths``.
        by_content: Also catch copies: compare the bytes of files of equal size.

    Returns:
        One :class:`EvalImageInStore` per match (empty when the corpus is clean).
    """
    index = _EvalIndex(eval_files)
    found = []
    for store in stores:
        for scene, path in scene_files(store):
            match = index.match(path.resolve(), by_content)  # compared resolved, reported as given
            if match is not None:
                found.append(EvalImageInStore(str(store), scene, path, match))
    return found


def check_no_eval_images(
    stores: Sequence[str | Path], eval_files: Iterable[str | Path], *, by_content: bool = True
) -> None:
    """Refuse a pretraining corpus that holds an evaluation image.

    Args:
        stores: Finished tile stores (the pretraining corpus).
        eval_files: The evaluation images, e.g. ``EuroSAT(root, "test").paths``.
        by_content: Also catch copies: compare the bytes of files of equal size.

    Raises:
        EvaluationLeakError: naming the first overlapping file, its scene and store, and the count.
    """
    found = find_eval_images(stores, eval_files, by_content=by_content)
    if found:
        first = found[0]
        copy = "" if first.file.resolve() == first.eval_file.resolve() else f" (a copy of {first.eval_file})"
        raise EvaluationLeakError(
            f"{first.file}{copy}: scene {first.scene} of the pretraining store {first.store} is an "
            f"evaluation image ({len(found)} such file(s) in the corpus); tile the pretraining store "
            "without the evaluation dataset's test images"
        )
