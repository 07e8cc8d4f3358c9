"""Pretrain an MAE or RC-MAE ViT on tile stores (LightningCLI: every option is in the YAML).

Examples:
    python pipelines/pretrain.py fit --config configs/pretrain/mae_tiny.yaml
    python pipelines/pretrain.py fit --config configs/pretrain/mae_tiny.yaml --trainer.max_steps 50
    python pipelines/pretrain.py fit --config configs/pretrain/mae_tiny.yaml --ckpt_path last  # resume
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsmae.data import TileDataModule
from rsmae.errors import RsmaeError
from rsmae.tasks import AutoPrecisionTrainer, PretrainTask
from rsmae.tasks.init import check_resume


def _in_chans(info: dict[str, Any]) -> int:
    return len(info["bands"])


def _img_size(info: dict[str, Any]) -> int:
    return int(info["tile_size"])


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
    try:
        PretrainCLI(
            PretrainTask, TileDataModule, trainer_class=AutoPrecisionTrainer, args=args,
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
