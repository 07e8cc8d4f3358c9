"""PretrainTask in a CPU Trainer: bf16 autocast, gradient clipping of fused AdamW, the attention kernel
and compilation, the default precision."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from rsmae.tasks import PretrainTask, default_precision


class _AutocastProbe(PretrainTask):
    seen: list[tuple[bool, torch.dtype]]

    def _shared_step(self, batch: dict, batch_idx: int, stage: str) -> Any:
        out = super()._shared_step(batch, batch_idx, stage)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.pred.dtype))
        return out


def test_bf16_mixed_autocast_on_cpu(eurosat_store: Path, tile_datamodule, cpu_trainer) -> None:
    dm = tile_datamodule(eurosat_store)
    task = _AutocastProbe(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0)
    task.seen = []
    cpu_trainer(1, precision="bf16-mixed").fit(task, datamodule=dm)
    assert task.seen == [(True, torch.bfloat16)]
    assert task.student.encoder.cls_token.dtype == torch.float32  # master weights stay fp32


def test_bf16_clips_gradients_of_fused_adamw(eurosat_store: Path, tile_datamodule, cpu_trainer) -> None:
    # Lightning's mixed-precision plugin refuses to clip for a fused optimizer; bf16 has no scaler
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0)
    trainer = cpu_trainer(1, precision="bf16-mixed", gradient_clip_val=1.0)
    trainer.fit(task, datamodule=tile_datamodule(eurosat_store))
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    task.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert abs(float(torch.nn.utils.get_total_norm([p.grad for p in params])) - 1.0) < 1e-3
    task.configure_gradient_clipping(optimizer, 0.5, "value")
    assert max(float(p.grad.abs().max()) for p in params) <= 0.5


@pytest.mark.parametrize("fused", [pytest.param(None, marks=pytest.mark.slow), True])  # None: torch.compile
def test_attention_kernel_by_device_and_compile(eurosat_store: Path, fused: bool | None, tile_datamodule,
                                                cpu_trainer) -> None:
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0,
                        fused_attention=fused, compile=fused is None)
    before = copy.deepcopy(task.student.encoder.state_dict())
    cpu_trainer(2).fit(task, datamodule=tile_datamodule(eurosat_store))
    flags = {m.fused_attn for m in task.model.modules() if hasattr(m, "fused_attn")}
    assert flags == {fused is True}  # auto on the CPU: the math path
    assert task._compiled == (fused is None)
    assert set(task.student.encoder.state_dict()) == set(before)  # compiling keeps the keys
    assert not torch.equal(task.student.encoder.blocks[0].mlp.fc1.weight, before["blocks.0.mlp.fc1.weight"])


def test_default_precision_follows_the_hardware() -> None:
    assert default_precision("cpu", flags={"avx2", "avx512f"}) == "32-true"
    assert default_precision("cpu", flags={"avx512_bf16"}) == "bf16-mixed"
    assert default_precision("cpu", flags={"amx_bf16", "amx_tile"}) == "bf16-mixed"
