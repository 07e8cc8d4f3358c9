"""Distributed pretraining on the CPU: FSDP2 over gloo matches one process, DDP ranks see disjoint data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rsmae.data import ShardSampler
from tests.conftest import ROOT
from tests.tasks import fsdp_worker

pytestmark = pytest.mark.slow  # end to end, several seconds each (make quick leaves them out)


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_fsdp_two_processes_match_one(tmp_path: Path, method: str) -> None:
    # Lightning's FSDPStrategy refuses the CPU; the model itself shards with FSDP2 over gloo and
    # trains exactly as one process on the whole batch does (mean of the two halves' losses).
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(1)
    images, noise = torch.randn(8, 13, 32, 32), torch.rand(8, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(fsdp_worker.worker, args=(2, port, method, images, noise, str(out)), nprocs=2)
    sharded = torch.load(out)
    full = fsdp_worker.build(method)
    total = sum(p.numel() for p in (full.student if method == "rcmae" else full).parameters())
    assert sharded["local_numel"] < 0.6 * total  # rank 0 held about half of the weights
    halves = fsdp_worker.build(method)
    params = [p for p in halves.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    expected = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = (halves(images[:4], noise=noise[:4]).loss + halves(images[4:], noise=noise[4:]).loss) / 2
        loss.backward()
        optimizer.step()
        if method == "rcmae":
            halves.update_teacher(0.9)
        expected.append(loss.item())
    assert sharded["losses"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_ddp_two_processes_see_disjoint_data(tmp_path: Path, eurosat_store: Path, pretrain_config,
                                             tile_datamodule) -> None:
    record = [{"class_path": "tests.tasks.conftest.RecordBatches", "init_args": {"out_dir": str(tmp_path)}}]
    config = pretrain_config(tmp_path, eurosat_store, steps=3, every=3, callbacks=record)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, str(ROOT / "pipelines" / "pretrain.py"), "fit", "--config", str(config),
           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = (set(r["indices"]) for r in ranks)
    assert len(a) == len(b) == 3 * 8 and not a & b
    dm = tile_datamodule(eurosat_store)
    dm.setup("fit")
    for rank, record in enumerate(ranks):  # each rank read its own ShardSampler shards, split once
        expected = list(ShardSampler(dm.train_set, seed=0, num_replicas=2, rank=rank))[: 3 * 8]
        assert record["indices"] == expected
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # gradients were all-reduced
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
