"""A process of the 2-process FSDP test (a module of its own, so that ``spawn`` can import it)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from timm.models.vision_transformer import Block
from torch.distributed.fsdp import fully_shard

from rsmae.models import RCMAE, MaskedAutoencoder, create_encoder, mae_decoder_defaults


def build(method: str) -> torch.nn.Module:
    """The same small MAE / RC-MAE in every process."""
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    mae = MaskedAutoencoder(encoder, **mae_decoder_defaults("vit_test"))
    return RCMAE(mae) if method == "rcmae" else mae


def train(model: torch.nn.Module, images: torch.Tensor, noise: torch.Tensor, steps: int) -> list[float]:
    """``steps`` AdamW steps on one batch; the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(images, noise=noise).loss
        loss.backward()
        optimizer.step()
        if isinstance(model, RCMAE):
            model.update_teacher(0.9)
        losses.append(loss.detach())
    return losses


def worker(rank: int, world: int, port: int, method: str, images: torch.Tensor, noise: torch.Tensor,
           out: str) -> None:
    """Shard every timm Block and each MAE with FSDP2 (the RC-MAE teacher like its student, so the
    EMA pairs local shards), train on this rank's half, save rank 0's view."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = build(method)
        student = model.student if method == "rcmae" else model
        for mae in [student, model.teacher] if method == "rcmae" else [student]:
            for module in mae.modules():
                if isinstance(module, Block):
                    fully_shard(module)
            fully_shard(mae)
        part = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
        losses = torch.stack(train(model, images[part], noise[part], steps=3))
        dist.all_reduce(losses)
        shards = [p.to_local().numel() for p in student.parameters()]
        if rank == 0:
            torch.save({"losses": (losses / world).tolist(), "local_numel": sum(shards)}, out)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()
