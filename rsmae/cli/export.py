"""Export the encoder of a pretraining checkpoint as a backbone file (weights + bands + statistics).

Example:
    rsmae export runs/mae_tiny/checkpoints/last.ckpt --out backbone.safetensors
"""

from __future__ import annotations

import argparse

from rsmae.cli.common import make_parser, run
from rsmae.tasks import export_backbone


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("checkpoint", help="Lightning checkpoint of rsmae fit (pipelines/pretrain.py)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--weights", choices=["student", "teacher"], default="student",
                   help="RC-MAE: export the student or the EMA teacher")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Export; return the exit code."""
    args = build_parser(prog).parse_args(argv)

    def export() -> int:
        path = export_backbone(args.checkpoint, args.out, args.weights)
        print(f"{path}: {args.weights} encoder")
        return 0

    return run(export, verbose=args.verbose)
