"""Score one backbone with one transfer protocol on one dataset (scene classification or change).

Prints a summary and, as its last line, a JSON object of the metrics. ``--task oscd|levircd|landsat``
runs change detection (the options of ``rsmae evaluate --task oscd --help``); ``--task bigearthnet``
scores multi-label mAP on BigEarthNet-S2 in torchgeo's layout under ``--root`` (protocols linear, knn).

Example:
    rsmae evaluate --backbone runs/mae_tiny/logs/version_0/backbone.safetensors --protocol linear
        --root ../shared/data/eurosat_ms_subset --seed 0
    rsmae evaluate --backbone B.safetensors --protocol full --fraction 5-shot --train-root EuroSAT/train
        --test-root my_heldout_scenes --epochs 30 --out eval/full
    rsmae evaluate --task oscd --backbone B.safetensors --protocol frozen
        --test-root ../shared/data/oscd_subset --seed 0 --out eval/oscd
    rsmae evaluate --task bigearthnet --backbone B.safetensors --protocol linear --root data/bigearthnet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rsmae.cli import evaluate_change
from rsmae.cli.common import make_parser, run
from rsmae.evaluation.change import CHANGE_DATASETS
from rsmae.evaluation.classification import PROTOCOLS, evaluate_classification
from rsmae.evaluation.data import ACCELERATORS
from rsmae.evaluation.multilabel import evaluate_multilabel
from rsmae.models import read_backbone_meta

TASKS = ("classification", "bigearthnet", *CHANGE_DATASETS)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options of classification and BigEarthNet."""
    p = make_parser(__doc__, prog)
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="classification (EuroSAT layout), bigearthnet, or change detection: "
                        f"{', '.join(CHANGE_DATASETS)}")
    p.add_argument("--backbone", required=True, help="backbone file (backbone.safetensors)")
    p.add_argument("--protocol", required=True, help=f"{', '.join(PROTOCOLS)} or lastK")
    p.add_argument("--root", help="folder holding train/ and test/ class folders (EuroSAT layout)")
    p.add_argument("--train-root", help="class folders to train on (a validation split is held out)")
    p.add_argument("--test-root", help="class folders to score")
    p.add_argument("--fraction", default="100%", help="label fraction: 100%%, 25%%, 5-shot")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, head and training")
    p.add_argument("--sensor", default="s2-l1c", help="sensor of the files")
    p.add_argument("--band-order", default="eurosat", help="band layout of the files")
    p.add_argument("--cache-dir", default=".cache/features", help="frozen-feature cache ('' = off)")
    p.add_argument("--out", default=None, help="folder for the confusion matrix and metrics.json; linear and "
                   "tuned protocols also save the model (classifier.safetensors: rsmae predict classify "
                   "--model); knn and head save none")
    p.add_argument("--epochs", type=int, default=30, help="tuned protocols: training epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="tuned protocols: peak learning rate")
    p.add_argument("--no-adapt", action="store_true", help="refuse a backbone of other bands")
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                   help="where features and training run: auto = a GPU when one is visible, else the CPU")
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parsed options (``argv`` default: ``sys.argv[1:]``)."""
    return build_parser(prog).parse_args(argv)


def _run(args: argparse.Namespace) -> tuple[dict, str]:
    """Metrics of one evaluation and its one-line summary."""
    if args.task == "bigearthnet":
        if not args.root:
            raise ValueError("--task bigearthnet needs --root, the folder in torchgeo's BigEarthNet layout")
        r = evaluate_multilabel(args.backbone, args.protocol, args.root, seed=args.seed,
                                cache_dir=args.cache_dir or None, adapt=not args.no_adapt,
                                accelerator=args.accelerator)
        return r, f"{args.protocol} on {args.root}: mAP {r['map']:.4f} ({r['n_test']} test patches)"
    train, test = args.train_root, args.test_root
    if args.root:
        train, test = train or str(Path(args.root, "train")), test or str(Path(args.root, "test"))
    if not train or not test:
        raise ValueError("pass --root, or both --train-root and --test-root")
    r = evaluate_classification(
        args.backbone, args.protocol, train, test, fraction=args.fraction, seed=args.seed,
        cache_dir=args.cache_dir or None, out_dir=args.out, sensor=args.sensor, layout=args.band_order,
        adapt=not args.no_adapt, accelerator=args.accelerator, epochs=args.epochs, lr=args.lr)
    return r, (f"{args.protocol} on {test}: accuracy {r['accuracy']:.4f} ({r['n_test']} images, trained on "
               f"{r['n_train']}), {r['trainable_params']} trainable parameters, {r['wall_s']:.1f} s")


def _evaluate(args: argparse.Namespace) -> int:
    read_backbone_meta(args.backbone)  # a checkpoint or foreign file fails here, named, with the fix
    result, line = _run(args)
    print(line)
    if args.out:
        Path(args.out, "metrics.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the evaluation; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", default="classification")
    known, _ = task.parse_known_args(argv)
    if known.task in CHANGE_DATASETS:
        return evaluate_change.main(argv, prog)
    args = parse_args(argv, prog)
    return run(lambda: _evaluate(args), verbose=args.verbose, level=logging.INFO)  # progress lines
