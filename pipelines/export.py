"""Export the encoder of a pretraining checkpoint as a backbone file (weights + bands + statistics).

Example:
    python pipelines/export.py runs/mae_tiny/checkpoints/last.ckpt --out backbone.safetensors
"""

from __future__ import annotations

import argparse
import sys

from rsmae.errors import RsmaeError
from rsmae.tasks import export_backbone


def main(argv: list[str] | None = None) -> int:
    """Export; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="Lightning checkpoint of pipelines/pretrain.py")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--weights", choices=["student", "teacher"], default="student",
                   help="RC-MAE: export the student (default) or the EMA teacher")
    args = p.parse_args(argv)
    try:
        path = export_backbone(args.checkpoint, args.out, args.weights)
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {args.weights} encoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
