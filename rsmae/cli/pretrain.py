r"""Pretrain an MAE or RC-MAE ViT on tile stores (LightningCLI: every option is in the YAML).

Configs compose: a base and one override, later files and --options winning key by key; values may
interpolate others after the merge (``${trainer.default_root_dir}/checkpoints``: omegaconf+ mode).
A shipped config is named by name (``--config mae_tiny`` brings its ``base.yaml`` first), a path
still works. Subcommands: fit (train) and validate (the reconstruction loss of a checkpoint).
-v/--verbose shows tracebacks and Lightning's INFO lines.

Examples:
    rsmae fit --config mae_tiny --data.stores '[demo_out/s2_l1c.zarr]'
    python pipelines/pretrain.py fit --config configs/pretrain/base.yaml \
        --config configs/pretrain/mae_tiny.yaml
    ... --trainer.max_steps 50 --trainer.default_root_dir runs/short   # loggers and checkpoints follow
    ... --ckpt_path last  # resume
    ... --print_config    # the merged config, every value resolved
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter, set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsmae.cli.common import run
from rsmae.cli.configs import expand_pretrain_configs
from rsmae.data import TileDataModule
from rsmae.errors import ModelConfigError
from rsmae.tasks import AutoPrecisionTrainer, PretrainTask
from rsmae.tasks.init import ARCHITECTURE, check_resume

# LightningCLI's subcommands that a pretraining run supports (no test or predict step)
SUBCOMMANDS = ("fit", "validate")
UNSUPPORTED = ("test", "predict")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, the description as written (the examples keep their lines)."""


def _in_chans(info: dict[str, Any]) -> int:
    return len(info["bands"])


def _img_size(info: dict[str, Any]) -> int:
    return int(info["tile_size"])


def _seed(seed: int | bool | None) -> int:
    """The model's and the data's seed from ``seed_everything`` (0 when it is off or drawn)."""
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0


def check_base_first(argv: list[str]) -> None:
    """Refuse an override given without the ``base.yaml`` beside it, earlier on the command line.

    Raises:
        ModelConfigError: naming the override, its base and the command that composes them.
    """
    seen: set[Path] = set()
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        name = value if flag in ("--config", "-c") else flag.removeprefix("--config=")
        if name == flag or not name.endswith((".yaml", ".yml")):
            continue
        base = Path(name).with_name("base.yaml")
        if Path(name).resolve() != base.resolve() and base.is_file() and base.resolve() not in seen:
            raise ModelConfigError(f"{name} is an override of {base}: give the base first, "
                                   f"--config {base} --config {name}")
        seen.add(Path(name).resolve())


def check_subcommand(argv: list[str]) -> None:
    """Refuse LightningCLI's ``test`` and ``predict``: a pretraining task has no such step.

    Raises:
        ModelConfigError: naming the subcommand and the ones that work.
    """
    if argv and argv[0] in UNSUPPORTED:
        raise ModelConfigError(f"{argv[0]}: not a pretraining subcommand (a pretraining task has no test or "
                               f"predict step); use {' or '.join(SUBCOMMANDS)}, and score a backbone with "
                               "rsmae evaluate")


class PretrainCLI(LightningCLI):
    """Band count, tile size and data statistics flow from the data into the model."""

    def __init__(self, *args: Any, on_trainer: Callable[[Trainer], None] | None = None,
                 **kwargs: Any) -> None:
        """LightningCLI's arguments; ``on_trainer`` is called with the trainer once it is built."""
        self._on_trainer = on_trainer
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only the subcommands a pretraining task supports."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the model's data-dependent arguments to the datamodule, and one seed to all three.

        ``seed_everything`` (``--seed_everything N``) is the one seed: the model's masks and
        augmentations and the data order follow it.
        """
        for target, fn in (("data_info", None), ("in_chans", _in_chans), ("img_size", _img_size)):
            parser.link_arguments("data.data_info", f"model.{target}", compute_fn=fn, apply_on="instantiate")
        for target in ("model.seed", "data.seed"):
            parser.link_arguments("seed_everything", target, compute_fn=_seed, apply_on="parse")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (always given: ``main`` reads ``sys.argv``), then check a --ckpt_path file.

        Lightning next replaces the model's arguments with the hyper-parameters saved in the
        checkpoint, which would silently undo a changed architecture (``--model.patch_size``): the
        model as given is compared here, the linked ``in_chans`` and ``img_size`` in :meth:`before_fit`.

        Raises:
            CheckpointError: naming the checkpoint and the settings that differ.
        """
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            given = self.config[subcommand].model.as_dict()
            check_resume(self.config[subcommand].get("ckpt_path"), given,
                         keys=[k for k in ARCHITECTURE if k in given])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, reported to ``on_trainer`` (the caller learns whether a run was interrupted)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self._on_trainer is not None:
            self._on_trainer(trainer)
        return trainer

    def before_fit(self) -> None:
        """Refuse a --ckpt_path that is missing or of another model, naming it, before Lightning loads it."""
        check_resume(self.config[self.subcommand].get("ckpt_path"), self.model.hparams)


def _pretrain(argv: list[str], prog: str | None) -> int:
    """Run LightningCLI on ``argv``; a Ctrl+C (Lightning exits 1 after its clean-up) is re-raised."""
    check_subcommand(argv)
    argv = expand_pretrain_configs(argv)
    check_base_first(argv)
    trainers: list[Trainer] = []
    help_kwargs = {"description": __doc__, "formatter_class": _HelpFormatter}
    try:
        PretrainCLI(
            PretrainTask, TileDataModule, trainer_class=AutoPrecisionTrainer, args=argv,
            parser_kwargs={"parser_mode": "omegaconf+",  # interpolations resolved after every file merged
                           "prog": prog, **help_kwargs, **dict.fromkeys(SUBCOMMANDS, help_kwargs)},
            save_config_kwargs={"overwrite": True},
            # ShardSampler already gives each rank its own shards: Lightning must not re-split them.
            trainer_defaults={"use_distributed_sampler": False},
            on_trainer=trainers.append,
        )
    except SystemExit as done:
        if done.code == 1 and trainers and trainers[-1].interrupted:
            raise KeyboardInterrupt from None
        raise
    return 0


def main(args: list[str] | None = None, prog: str | None = None) -> int:
    """Run the CLI; return the exit code (2 on an rsmae error, e.g. a non-finite loss; 130 on Ctrl+C).

    Args:
        args: ``fit ...`` or ``validate ...`` (default: ``sys.argv[1:]``); ``-v``/``--verbose``
            anywhere shows tracebacks and Lightning's INFO lines.
        prog: Program name in the usage line (``rsmae``; default: the script's name).
    """
    argv = sys.argv[1:] if args is None else list(args)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    # ${trainer.default_root_dir} names the key from the subcommand's root, not from "fit."
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return run(lambda: _pretrain(argv, prog), verbose=verbose, level=logging.INFO)
