"""Where the pretraining corpus and the evaluation images overlap on the ground (issue 21, leakage).

Footprints of every pretraining scene (the stores given, or the default corpus's raster folders) and
of every evaluation image (both EuroSAT splits, every labelled OSCD city) in WGS 84, grown by
``--margin-m``; each pair that touches is listed. Writes ``benchmarks/results/footprint_leaks.md``
naming the commit, the command and the machine.

Example::

    python benchmarks/footprint_leaks.py                       # the default corpus of ../shared/data
    python benchmarks/footprint_leaks.py --stores demo_out/s2_l1c.zarr --margin-m 2000
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from provenance import REPO, git_commit

from rsmae.datasets.footprints import file_footprints, footprint_overlaps, store_footprints
from rsmae.evaluation.speed import cpu_name
from rsmae.files import atomic_write_text

DATA = REPO.parent / "shared" / "data"
OSCD = "oscd_subset/Onera Satellite Change Detection dataset - Images"


def _first_band(folder: Path) -> list[Path]:
    """One file per scene folder (its B02, the 10 m grid), date folders ``imgs_1``/``imgs_2``."""
    return sorted(p for p in folder.glob("*/imgs_*/*B02.tif"))


def main(argv: list[str] | None = None) -> int:
    """Compute the overlaps, print and write the table; exit 1 when any pair overlaps."""
    p = argparse.ArgumentParser(description=__doc__.split("Example")[0])
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument("--stores", nargs="*", default=None, help="pretraining stores (default: raster folders)")
    p.add_argument("--exclude", nargs="*", default=["saclay_w"],
                   help="corpus scene folders left out (the default corpus leaves saclay_w out: it holds a "
                        "EuroSAT image and adjoins saclay_e); --exclude with no name keeps every folder")
    p.add_argument("--margin-m", type=float, default=1000.0, help="how near counts as the same place")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "footprint_leaks.md")
    args = p.parse_args(argv)
    if args.stores:
        corpus = [f for s in args.stores for f in store_footprints(s)]
        what = ", ".join(args.stores)
    else:
        files = [f for f in _first_band(args.data / "oscd_unlabelled") if f.parts[-3] not in args.exclude]
        corpus = file_footprints(files)
        what = f"oscd_unlabelled without {', '.join(args.exclude) or 'nothing'} ({len(files)} scenes)"
    evaluation = file_footprints(sorted((args.data / "eurosat_ms_subset").rglob("*.tif"))
                                 + _first_band(args.data / OSCD))
    pairs = footprint_overlaps(corpus, evaluation, args.margin_m)
    short = lambda name: name.replace(str(args.data) + "/", "")  # noqa: E731
    lines = [
        "# Pretraining footprints near evaluation images",
        "",
        f"Commit {git_commit(['rsmae/datasets/footprints.py'])}; command "
        f"`{shlex.join(['python', 'benchmarks/footprint_leaks.py', *(argv or sys.argv[1:])])}`; "
        f"machine {cpu_name()}.",
        f"Corpus: {what}, {len(corpus)} footprints. Evaluation: {len(evaluation)} footprints (EuroSAT "
        f"both splits, OSCD labelled cities). Margin {args.margin_m:.0f} m. Overlap: share of the "
        "evaluation footprint inside the corpus footprint (0: within the margin only).",
        "",
        *(["| corpus scene | evaluation image | overlap |", "|---|---|---|"] if pairs else []),
        *(f"| {short(x.corpus)} | {short(x.evaluation)} | {x.overlap:.2f} |" for x in pairs),
        *([""] if pairs else []),
        f"{len(pairs)} pair(s)." if pairs else "No pretraining footprint comes near an evaluation image.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    return 1 if pairs else 0


if __name__ == "__main__":
    sys.exit(main())
