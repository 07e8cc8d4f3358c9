"""Change detection: train (or load) a change model, score whole test scenes by sliding windows.

Prints one line per test scene, then a JSON object (f1, iou, precision, recall, ...) as the last
line; writes the model, metrics.json, pr_curve.csv and maps/<scene>.png under --out. Also
``rsmae evaluate --task oscd|levircd|landsat``.

Examples (one command per line)::

    rsmae evaluate --task oscd --backbone B.safetensors --protocol frozen
        --train-root ../shared/data/oscd_subset --test-root ../shared/data/oscd_subset --out runs/cd
    rsmae evaluate --task oscd --model fc-siam-diff
        --test-root ../shared/data/oscd_subset --set steps=400 --out runs/fcsd
    rsmae evaluate --task oscd --load runs/cd/change_model.safetensors
        --test-root OTHER_OSCD_FOLDER --test-cities all
"""

from __future__ import annotations

import argparse
import json
import logging

from rsmae.cli.common import ERRORS, make_parser, run
from rsmae.evaluation.change import CHANGE_DATASETS, ChangeConfig, evaluate_change, format_scene, summary
from rsmae.evaluation.data import ACCELERATORS
from rsmae.models import read_backbone_meta


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("--task", choices=list(CHANGE_DATASETS), default="oscd", help="dataset layout")
    p.add_argument("--backbone", help="backbone .safetensors (default: random init)")
    p.add_argument("--model", choices=["siamese-vit", "fc-siam-diff"], default="siamese-vit",
                   help="a siamese ViT on the backbone, or the FC-Siam-diff baseline")
    p.add_argument("--protocol", default="frozen", help="frozen, lastK (e.g. last2), mlp or full")
    p.add_argument("--train-root", help="folder of the training scenes (default: --test-root)")
    p.add_argument("--test-root", required=True, help="folder of the test scenes")
    p.add_argument("--train-cities", type=_names, help="comma-separated scenes instead of the train split")
    p.add_argument("--test-cities", type=_names, help="scenes (comma-separated) or 'all'")
    p.add_argument("--bands", type=_names, help="comma-separated bands (default: all of the dataset's)")
    p.add_argument("--load", help="a saved change model: score it without training")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops, head and training")
    p.add_argument("--out", help="output folder (model, metrics.json, pr_curve.csv, maps/)")
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                   help="where training and scoring run: auto = a GPU when one is visible, else the CPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ChangeConfig setting, repeatable: steps=300, crop_size=96, precision=bf16-mixed ...")
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parsed options (``argv`` default: ``sys.argv[1:]``)."""
    return build_parser(prog).parse_args(argv)


def _evaluate(args: argparse.Namespace) -> int:
    if args.backbone:
        read_backbone_meta(args.backbone)  # a checkpoint or foreign file fails here, named
    result = evaluate_change(
        args.backbone, args.protocol, test_root=args.test_root, train_root=args.train_root,
        dataset=args.task, seed=args.seed, out_dir=args.out, model=args.model,
        train_cities=args.train_cities, test_cities=args.test_cities, bands=args.bands, load=args.load,
        on_scene=lambda line: print(format_scene(line), flush=True),
        **{"accelerator": args.accelerator, **ChangeConfig.parse_settings(args.set)})
    print(json.dumps(summary(result)))
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one change-detection evaluation; return the exit code."""
    args = parse_args(argv, prog)
    # an unknown --set key is a TypeError of evaluate_change's keywords
    return run(lambda: _evaluate(args), verbose=args.verbose, level=logging.INFO,  # progress lines
               errors=(*ERRORS, TypeError))
