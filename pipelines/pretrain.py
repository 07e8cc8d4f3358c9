"""Pretrain an MAE or RC-MAE ViT on tile stores (LightningCLI: every option is in the YAML).

The command is ``rsmae fit`` (``rsmae fit --help``); this script runs the same code,
rsmae/cli/pretrain.py, with LightningCLI's subcommand first (fit or validate):

    python pipelines/pretrain.py fit --config configs/pretrain/base.yaml \
        --config configs/pretrain/mae_tiny.yaml
    rsmae fit --config mae_tiny   # the same run: a shipped config by name, its base first
"""

import sys

from rsmae.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
