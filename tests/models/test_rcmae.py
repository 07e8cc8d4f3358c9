"""RC-MAE: the teacher's momentum schedule, its frozen EMA copy of the student, the shared mask, and the
teacher following the student by global step in a Lightning run."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from rsmae.models import RCMAE, masked_mse, teacher_momentum
from rsmae.tasks import PretrainTask
from tests.models.mae_helpers import fixed_noise, make_mae

# ---------------------------------------------------------------- RC-MAE


def test_teacher_momentum_schedule():
    total = 1000
    values = [teacher_momentum(s, total) for s in range(0, total + 1, 50)]
    assert values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False)) and values[1] > values[0]
    assert teacher_momentum(500, 1000) == pytest.approx(0.998)
    assert teacher_momentum(250, 1000) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert teacher_momentum(-5, total) == pytest.approx(0.996)
    assert teacher_momentum(5 * total, total) == 1.0
    # global step: step 1500 of a 2000-step run is late in the run, not the start of epoch 2
    assert teacher_momentum(1500, 2000) > teacher_momentum(500, 2000)
    assert teacher_momentum(0, 10, base=0.99) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="total_steps"):
        teacher_momentum(0, 0)


def test_rcmae_teacher_frozen_and_consistent_at_init(tiles):
    rc = RCMAE(make_mae(), consistency_weight=0.5)
    noise = fixed_noise(rc.student, 4)
    out = rc(tiles, noise=noise)
    assert out.consistency_loss is not None
    torch.testing.assert_close(out.consistency_loss, torch.zeros(()), atol=1e-10, rtol=0)
    torch.testing.assert_close(out.loss, out.recon_loss)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in rc.teacher.parameters())
    assert all(p.grad is not None for p in rc.student.parameters() if p.requires_grad)
    assert any(k.startswith("teacher.") for k in rc.state_dict())
    assert rc.train().student.training and not rc.teacher.training
    with torch.no_grad():
        rc.student.decoder_pred.bias.add_(0.1)
    out = rc(tiles, noise=noise)
    assert out.consistency_loss.item() == pytest.approx(0.01, rel=1e-4)
    torch.testing.assert_close(out.loss, out.recon_loss + 0.5 * out.consistency_loss)


def test_rcmae_ema_update_math():
    rc = RCMAE(make_mae())
    with torch.no_grad():
        for p in rc.student.parameters():
            p.add_(torch.randn_like(p))
        rc.student.decoder_pos_embed.mul_(2.0)
    before = {k: v.clone() for k, v in rc.teacher.named_parameters()}
    student = dict(rc.student.named_parameters())
    rc.update_teacher(0.9)
    for k, t in rc.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * before[k] + 0.1 * student[k])
    torch.testing.assert_close(rc.teacher.decoder_pos_embed, rc.student.decoder_pos_embed)
    rc.update_teacher(1.0)
    for k, t in rc.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * before[k] + 0.1 * student[k])
    rc.update_teacher(0.0)
    assert all(torch.equal(t, student[k]) for k, t in rc.teacher.named_parameters())
    with pytest.raises(ValueError, match="momentum"):
        rc.update_teacher(1.5)


def test_rcmae_same_mask_for_teacher(tiles):
    rc = RCMAE(make_mae())
    with torch.no_grad():
        for p in rc.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    noise = fixed_noise(rc.student, 4)
    a = rc(tiles, noise=noise)
    b = rc(tiles, noise=noise)
    assert a.loss.item() == b.loss.item() and a.consistency_loss.item() > 0
    latent, _, restore = rc.teacher.forward_encoder(tiles, noise, 0.75)
    teacher_pred = rc.teacher.forward_decoder(latent, restore)
    torch.testing.assert_close(a.consistency_loss, masked_mse(a.pred, teacher_pred, a.mask))


class _TeacherTrace(L.Callback):
    def __init__(self) -> None:
        self.trace: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = copy.deepcopy(pl_module.model.teacher.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        model = pl_module.model
        self.trace.append({"step": trainer.global_step, "momentum": pl_module.last_teacher_momentum,
                           "before": self.before, "teacher": copy.deepcopy(model.teacher.state_dict()),
                           "student": copy.deepcopy(model.student.state_dict())})


def test_rcmae_teacher_follows_student_with_global_step_momentum(eurosat_store: Path, tile_datamodule,
                                                                 cpu_trainer) -> None:
    dm = tile_datamodule(eurosat_store, batch_size=8)
    task = PretrainTask(method="rcmae", preset="vit_test", patch_size=8, img_size=64, in_chans=13,
                        teacher_momentum=0.9, warmup_steps=0, base_lr=1e-2)
    trace = _TeacherTrace()
    cpu_trainer(4, accumulate_grad_batches=2, callbacks=[trace]).fit(task, datamodule=dm)
    # lr scaled by the effective batch; no decay on 1-D params, position embeddings or tokens
    groups = task.trainer.optimizers[0].param_groups
    assert groups[0]["initial_lr"] == pytest.approx(1e-2 * 8 * 2 / 256)
    names = {id(p): n for n, p in task.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0
    assert "model.student.mask_token" in no_decay and "model.student.encoder.cls_token" in no_decay
    assert not any("teacher" in names[id(p)] for g in groups for p in g["params"])
    # 8 micro-batches, 4 optimiser steps: the teacher moves only after a step, by that step's momentum
    steps = [t for t in trace.trace if t["momentum"] is not None]
    assert [t["step"] for t in trace.trace] == [0, 1, 1, 2, 2, 3, 3, 4]
    moved = [i for i, t in enumerate(trace.trace) if not torch.equal(t["before"]["encoder.cls_token"],
                                                                      t["teacher"]["encoder.cls_token"])]
    assert moved == [1, 3, 5, 7]
    for i in moved:
        t = trace.trace[i]
        m = teacher_momentum(t["step"] - 1, 4, base=0.9)
        assert t["momentum"] == pytest.approx(m) and m < 1.0
        for key, value in t["teacher"].items():
            if key in dict(task.model.teacher.named_parameters()):
                torch.testing.assert_close(value, m * t["before"][key] + (1 - m) * t["student"][key])
    assert steps[-1]["momentum"] > steps[0]["momentum"]
