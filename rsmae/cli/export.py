"""Export the encoder of a pretraining checkpoint as a backbone file (weights + bands + statistics).

With ``--format onnx``: a checkpoint's encoder, a backbone file, a change model or a scene
classifier (``rsmae evaluate ... --out``) as an ONNX model of raw pixels (normalisation inside,
dynamic batch axis) with its bands and window in the file's metadata (needs ``pip install
'rsmae[onnx]'``).

Examples:
    rsmae export runs/mae_tiny/checkpoints/last.ckpt --out backbone.safetensors
    rsmae export backbone.safetensors --format onnx --out backbone.onnx
    rsmae export runs/cd/change_model.safetensors --format onnx --out change.onnx
"""

from __future__ import annotations

import argparse

from rsmae.cli.common import ERRORS, make_parser, run
from rsmae.tasks import export_backbone


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("checkpoint", help="Lightning checkpoint of rsmae fit (pipelines/pretrain.py); with "
                   "--format onnx also a backbone .safetensors, a change model or a classifier")
    p.add_argument("--out", required=True, help="output .safetensors (or .onnx)")
    p.add_argument("--weights", choices=["student", "teacher"], default="student",
                   help="RC-MAE: export the student or the EMA teacher")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="a backbone file, or an ONNX model for onnxruntime")
    p.add_argument("--pool", action="store_true", help="onnx of a backbone: one pooled vector per window")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Export; return the exit code."""
    args = build_parser(prog).parse_args(argv)

    def export() -> int:
        if args.format == "onnx":
            from rsmae.predict.export import export_any_onnx

            path, task = export_any_onnx(args.checkpoint, args.out, pool=args.pool, weights=args.weights)
            print(f"{path}: ONNX {task} model")
            return 0
        path = export_backbone(args.checkpoint, args.out, args.weights)
        print(f"{path}: {args.weights} encoder")
        return 0

    return run(export, verbose=args.verbose, errors=(*ERRORS, ImportError))
