"""Whole-scene prediction: georeferenced embeddings, change and class maps of any size, in constant memory.

Writes one folder per scene under --out (made under a temporary name and renamed when complete: a
rerun skips finished scenes and redoes a killed one). Exit status: 0 done; 2 bad input (error: <file>:
...; nothing written); 130 interrupted.

Examples (one command per line)::

    rsmae predict embed --backbone B.safetensors SCENE_FOLDER_OR_FILE --out embeddings/
    rsmae predict embed --backbone B.safetensors 'scenes/*.tif' --pool --out pooled/ --engine onnx
    rsmae predict change --model runs/cd/change_model.safetensors DATE1 DATE2 --out changes/ --min-area 200
    rsmae predict classify --model runs/eval/classifier.safetensors SCENE --out classes/
    rsmae predict classify --model M 'scenes/*.tif' --out classes/ --dask tcp://HOST:8786  # or --workers 4
    rsmae predict embed --backbone B 'scenes/*.tif' --out emb/ --accelerator gpu --devices 4 --precision bf16

``classify`` spreads each window's class probabilities over its pixels and blends overlapping windows
(as ``change`` does): class_index.tif and class_prob.tif per pixel, on the scene's grid. ``embed`` and
``classify`` run many scenes one per task on ``--workers`` local processes or on Dask (``--dask``, as
``rsmae tile``), or over ``--devices`` GPUs per node (and ``--num-nodes`` nodes started by SLURM or
torchrun) through Lightning's predict loop, one process per device; a rerun skips the scenes finished by
any of them. ``change`` runs its pair on one device (``--accelerator``).
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from rsmae.cli.common import HelpFormatter, dask_target, make_parser, run
from rsmae.evaluation.data import ACCELERATORS
from rsmae.predict import PredictConfig, predict_change, predict_classify, predict_embed


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (one subfolder per scene)")
    p.add_argument("--overlap", type=int, help="pixels shared by neighbouring windows (default: window/4)")
    p.add_argument("--batch", type=int, default=16, help="windows per model call")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="run the model in PyTorch or in onnxruntime (exported in memory)")
    p.add_argument("--nodata", type=float, default=0.0,
                   help="value marking nodata in files that declare none (nan: none)")
    p.add_argument("--threads", type=int,
                   help="model threads (default: all cores; fewer can be much faster on a shared machine)")
    p.add_argument("--band-order", help="band order of multi-band files without band descriptions (a layout)")
    p.add_argument("--precision", choices=["32", "bf16", "auto"], default="32",
                   help="model arithmetic: auto = bf16 where the device computes it natively (GPUs with "
                        "bf16, CPUs with AMX or AVX512-BF16), else fp32")
    p.add_argument("--accelerator", choices=ACCELERATORS,
                   help="device: auto = a GPU when one is visible, else the CPU (default: the CPU, in this "
                        "process); embed and classify then run through Lightning's predict loop")


def _positive(value: str) -> int:
    """An ``int`` of at least 1 (``--devices``, ``--num-nodes``)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return number


def _many(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="local processes, one scene per task (1: this "
                   "process); with --dask local, the cluster's workers")
    p.add_argument("--dask", nargs="?", const=True, default=None, type=dask_target, metavar="ADDRESS|local",
                   help="run the scenes on Dask: 'local' (a LocalCluster of --workers processes; also the "
                        "bare flag) or a scheduler address such as tcp://HOST:8786")
    p.add_argument("--devices", type=_positive,
                   help="devices per node, one process each, the scenes dealt over them (Lightning's ddp; "
                        "default with --accelerator: 1)")
    p.add_argument("--num-nodes", type=_positive, default=1,
                   help="nodes of a multi-node run (their processes started by SLURM or torchrun)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    embed = tasks.add_parser("embed", help="patch features of a backbone as a COG, with a PCA preview",
                             formatter_class=HelpFormatter)
    embed.add_argument("inputs", nargs="+", metavar="SCENE", help="scene files, folders or globs")
    embed.add_argument("--backbone", required=True, help="backbone .safetensors (rsmae export)")
    embed.add_argument("--pool", action="store_true", help="one vector per window (windows tile the scene)")
    _common(embed)
    _many(embed)
    change = tasks.add_parser("change", help="change probability, mask and polygons of two dates",
                              formatter_class=HelpFormatter)
    change.add_argument("date1", help="scene of date 1 (its grid is the output grid)")
    change.add_argument("date2", help="scene of date 2 (read onto date 1's grid)")
    change.add_argument("--model", required=True,
                        help="change model saved by rsmae evaluate --task ... --out")
    change.add_argument("--threshold", type=float, help="change probability threshold (default: the model's)")
    change.add_argument("--min-area", type=float, default=0.0, help="smallest change polygon in m²")
    _common(change)
    change.add_argument("--devices", type=int, help=argparse.SUPPRESS)  # refused beyond 1, with the reason
    change.add_argument("--num-nodes", type=int, default=1, help=argparse.SUPPRESS)
    classify = tasks.add_parser("classify", help="class index and class probabilities per pixel as COGs",
                                formatter_class=HelpFormatter)
    classify.add_argument("inputs", nargs="+", metavar="SCENE", help="scene files, folders or globs")
    classify.add_argument("--model", required=True,
                          help="scene classifier saved by rsmae evaluate --protocol "
                               "linear|mlp|lastK|full --out (classifier.safetensors)")
    _common(classify)
    _many(classify)
    return p


def _config(args: argparse.Namespace) -> PredictConfig:
    return PredictConfig(overlap=args.overlap, batch=args.batch, engine=args.engine, nodata=args.nodata,
                         band_order=args.band_order, min_area=getattr(args, "min_area", 0.0),
                         threshold=getattr(args, "threshold", None),
                         pool=getattr(args, "pool", False), threads=args.threads, precision=args.precision,
                         accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes)


def _predict(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with tqdm(unit="window", desc=args.task, disable=None) as bar:
        if args.task == "embed":
            folders = predict_embed(args.inputs, args.backbone, args.out, cfg, progress=bar.update,
                                    workers=args.workers, dask=args.dask)
        elif args.task == "classify":
            folders = predict_classify(args.inputs, args.model, args.out, cfg, progress=bar.update,
                                       workers=args.workers, dask=args.dask)
        else:
            folders = [predict_change(args.date1, args.date2, args.model, args.out, cfg, progress=bar.update)]
    for folder in folders:
        print(folder)
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``predict embed|change|classify``; return the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run(lambda: _predict(args), verbose=args.verbose)
