"""The landscape sweep's plan: same sample budget, accumulation above the micro-batch, warmup share."""

from __future__ import annotations

import pytest
import yaml

from rsmae.errors import RsmaeError
from rsmae.experiments.sweep import plan
from tests.conftest import ROOT


def test_shipped_sweep_gives_every_run_the_same_samples() -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "landscape" / "sweep-cpu-small.yaml").read_text())
    runs = {r["name"]: r for r in plan(cfg)}
    assert {r["steps"] * r["batch"] for r in runs.values()} == {cfg["samples"]}
    assert (runs["AdamW b16"]["micro_batch"], runs["AdamW b16"]["accumulate"]) == (16, 1)
    assert (runs["AdamW b256"]["micro_batch"], runs["AdamW b256"]["accumulate"]) == (32, 8)
    assert runs["AdamW b256"]["warmup"] == round(0.05 * runs["AdamW b256"]["steps"])
    assert {r["optimizer"] for r in runs.values()} == {"adamw", "sgd", "lamb"}


def test_a_batch_that_is_not_a_multiple_of_the_micro_batch_is_refused() -> None:
    cfg = {"samples": 960, "micro_batch": 32, "warmup_fraction": 0.05,
           "runs": [{"name": "odd", "optimizer": "adamw", "batch": 48, "base_lr": 1e-3, "weight_decay": 0.0}]}
    with pytest.raises(RsmaeError, match="batch 48 is not a multiple of micro_batch 32"):
        plan(cfg)
