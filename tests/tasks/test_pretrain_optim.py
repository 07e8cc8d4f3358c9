"""Pretraining optimizers of the landscape sweep: AdamW, SGD with momentum, LAMB; same lr scaling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.optim import Lamb

from rsmae.errors import ModelConfigError
from rsmae.tasks import PretrainTask

OPTIMIZERS = [("sgd", torch.optim.SGD), ("lamb", Lamb), ("adamw", torch.optim.AdamW)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cls"), OPTIMIZERS)
def test_each_optimizer_trains_with_the_scaled_lr(eurosat_store: Path, name: str, cls: type, tile_datamodule,
                                                  cpu_trainer) -> None:
    task = PretrainTask(method="mae", preset="vit_test", patch_size=8, img_size=64, in_chans=13,
                        optimizer=name, warmup_steps=0, base_lr=1e-2, weight_decay=1e-4)
    before = task.model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    dm = tile_datamodule(eurosat_store, batch_size=8)
    cpu_trainer(2, accumulate_grad_batches=2).fit(task, datamodule=dm)
    optimizer = task.trainer.optimizers[0]
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-2 * 8 * 2 / 256)
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9
    assert not torch.equal(before, task.model.encoder.blocks[0].attn.qkv.weight)


def test_unknown_optimizer_is_refused_with_the_choices() -> None:
    with pytest.raises(ModelConfigError, match="optimizer='rmsprop'; choose one of adamw, sgd, lamb"):
        PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, optimizer="rmsprop")
