"""Turn the Tiny-ImageNet .npz train images into PNG scenes the tiler reads (one tile per image).

The archive holds ``x_train`` (N, 64, 64, 3) uint8 RGB and ``train_files`` (source paths such as
``train/n02124075/images/n02124075_0.JPEG``). Each train image becomes a lossless 3-band PNG
``OUT/<wnid>/<wnid>_<k>.png`` (pixels unchanged; no georeferencing, so the tiler keeps pixel
coordinates), whose scene id ``<wnid>/<wnid>_<k>`` names its source image. Only the train split is
written: the val split stays out of every pretraining corpus.

``--limit N`` keeps N images spread evenly over the classes (the first image of every class, then
the second, ...), so a natural-image corpus can match the image count of another one.

Example:
    python datasets/tinyimagenet/prepare.py ../shared/data/tinyimagenet64_subset --out work/tin
    python pipelines/tile.py work/tin --sensor rgb --tile-size 64 --nodata nan --out stores/tin.zarr

``--nodata nan`` makes every pixel valid: by default the tiler counts pixels equal to 0 in all bands
as nodata, but black is a colour here (19 of the 3,030 train images are more than 10 % black, and
would be dropped; the statistics would skip their black pixels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

NPZ = "tinyimagenet64_subset.npz"


def select(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the images to keep, class-balanced and in a fixed order.

    Args:
        labels: Class index of every image.
        limit: How many to keep (``None``: all).

    Returns:
        Indices sorted by (rank of the image within its class, class), cut to ``limit``.
    """
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        where = np.nonzero(labels == cls)[0]
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    if limit is not None:
        if not 0 < limit <= len(labels):
            raise ValueError(f"--limit {limit}: must be in 1..{len(labels)} (train images)")
        order = order[:limit]
    return order


def member_names(member: str, where: str) -> tuple[str, str]:
    """The class folder and file stem an archive entry names, refused unless both are plain names.

    Args:
        member: A ``train_files`` entry (``train/<wnid>/images/<wnid>_<k>.JPEG``).
        where: The archive and entry, for the message.

    Returns:
        ``(wnid, stem)``, each a single path component.

    Raises:
        ValueError: naming the entry when it is absolute, holds ``..``, a backslash or a NUL, or
            yields an empty or dot name: it would write outside ``--out``.
    """
    source = PurePosixPath(member)
    wnid, stem = source.parent.parent.name, source.stem
    bad = (source.is_absolute() or ".." in source.parts or any(c in member for c in "\\\0")
           or any(n in ("", ".", "..") for n in (wnid, stem)))
    if bad:
        raise ValueError(f"{where} = {member!r}: not a relative train/<wnid>/images/<name> path (absolute, "
                         "'..', a backslash or an empty name); the archive is damaged or not Tiny-ImageNet: "
                         "download it again")
    return wnid, stem


def prepare(root: Path, out: Path, limit: int | None = None) -> list[Path]:
    """Write the selected train images as PNGs under ``out``; return their paths (selection order).

    Args:
        root: Folder holding ``tinyimagenet64_subset.npz`` (or the .npz file itself).
        out: Output folder (created).
        limit: Number of images to keep, class-balanced (default all 3,030).

    Raises:
        ValueError: an archive entry names a path outside ``out`` (:func:`member_names`).
    """
    path = root / NPZ if root.is_dir() else root
    with np.load(path) as data:
        images, labels, files = data["x_train"], data["y_train"], data["train_files"]
    chosen = select(labels, limit)
    names = [member_names(str(files[i]), f"{path}: train_files[{i}]") for i in chosen]  # all, before writing
    paths = []
    for i, (wnid, stem) in zip(chosen, names, strict=True):
        target = out / wnid / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target)
        paths.append(target)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help=f"the tinyimagenet64_subset folder (holding {NPZ})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None, help="keep N images, class-balanced")
    args = p.parse_args(argv)
    path = args.root / NPZ if args.root.is_dir() else args.root
    if not path.is_file():
        print(f"error: {path}: not found; pass the tinyimagenet64_subset folder", file=sys.stderr)
        return 2
    try:
        paths = prepare(args.root, args.out, args.limit)
    except (ValueError, KeyError) as err:  # KeyError: an array missing from the archive
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(paths)} images written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
