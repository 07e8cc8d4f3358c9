"""The ``rsmae`` command: one entry point, a subcommand per pipeline (also ``python -m rsmae``).

Each subcommand is a module of this package with a ``main(argv, prog) -> int``, imported only when
it runs: ``rsmae --help`` and ``rsmae tile`` do not import torch. ``pipelines/<name>.py`` are thin
wrappers of the same modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from rsmae import __version__

__all__ = ["COMMANDS", "main"]


class Command(NamedTuple):
    """A subcommand: its module and its one-line help."""

    module: str
    help: str


COMMANDS = {
    "tile": Command("tile", "tile multispectral scenes into a sharded Zarr v3 store"),
    "fit": Command("pretrain", "pretrain an MAE or RC-MAE ViT on tile stores (LightningCLI)"),
    "evaluate": Command("evaluate", "score a backbone: scene classification, BigEarthNet, change detection"),
    "export": Command("export", "export the encoder of a pretraining checkpoint as a backbone file"),
    "inspect": Command("inspect_store", "print a summary of tile stores"),
    "report": Command("report", "summarise a pretraining run: loss and probe curves, its files"),
    "predict": Command("predict", "whole-scene embeddings, change and class maps as COGs"),
    "landscape": Command("landscape", "loss landscapes and flatness of pretrained and supervised ViTs"),
}


def _parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {c.help}" for name, c in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="rsmae", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remote-sensing MAE pretraining: tile scenes, pretrain, evaluate.",
        epilog=f"commands:\n{lines}\n\nrsmae COMMAND --help shows a command's options. "
               "Exit codes: 0 done, 2 error, 130 interrupted (tile: 3 when scenes were skipped).")
    p.add_argument("-V", "--version", action="version", version=f"rsmae {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show tracebacks and third-party INFO logs (also after the command)")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``rsmae COMMAND ...``; return the command's exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    top = _parser().parse_args(argv[:first + 1])  # options before the command, and the command
    rest = argv[first + 1:]
    if top.verbose:
        rest = ["--verbose", *rest]
    module = importlib.import_module(f"rsmae.cli.{COMMANDS[top.command].module}")
    if top.command == "fit":
        return module.main(["fit", *rest], prog="rsmae")
    return module.main(rest, prog=f"rsmae {top.command}")
