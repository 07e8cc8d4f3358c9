"""Pretrain an MAE or RC-MAE ViT on tile stores (LightningCLI: every option is in the YAML).

Configs compose: a base and one override, later files and --options winning key by key; values may
interpolate others after the merge (``${trainer.default_root_dir}/checkpoints``: omegaconf+ mode).

Examples:
    python pipelines/pretrain.py fit --config configs/pretrain/base.yaml \
        --config configs/pretrain/mae_tiny.yaml
    ... --trainer.max_steps 50 --trainer.default_root_dir runs/short   # loggers and checkpoints follow
    ... --ckpt_path last  # resume
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsmae.data import TileDataModule
from rsmae.errors import ModelConfigError, RsmaeError
from rsmae.tasks import AutoPrecisionTrainer, PretrainTask
from rsmae.tasks.init import check_resume


def _in_chans(info: dict[str, Any]) -> int:
    return len(info["bands"])


def _img_size(info: dict[str, Any]) -> int:
    return int(info["tile_size"])


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


class PretrainCLI(LightningCLI):
    """Band count, tile size and data statistics flow from the data into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the model's data-dependent arguments to the instantiated datamodule."""
        for target, fn in (("data_info", None), ("in_chans", _in_chans), ("img_size", _img_size)):
            parser.link_arguments("data.data_info", f"model.{target}", compute_fn=fn, apply_on="instantiate")

    def before_fit(self) -> None:
        """Refuse a --ckpt_path that is missing or of another model, naming it, before Lightning loads it."""
        check_resume(self.config[self.subcommand].get("ckpt_path"), self.model.hparams)


def main(args: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (2 on an rsmae error, e.g. a non-finite loss)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # ${trainer.default_root_dir} names the key from the subcommand's root, not from "fit."
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    try:
        check_base_first(sys.argv[1:] if args is None else args)
        PretrainCLI(
            PretrainTask, TileDataModule, trainer_class=AutoPrecisionTrainer, args=args,
            parser_kwargs={"parser_mode": "omegaconf+"},  # interpolations resolved after every file merged
            save_config_kwargs={"overwrite": True},
            # ShardSampler already gives each rank its own shards: Lightning must not re-split them.
            trainer_defaults={"use_distributed_sampler": False},
        )
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
