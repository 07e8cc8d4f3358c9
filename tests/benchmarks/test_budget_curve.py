"""benchmarks/budget_curve.py: which snapshots of a run it probes, and its tables' verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsmae.models import create_encoder, save_backbone
from rsmae.models.weights import BackboneMeta
from tests.conftest import load_script

budget = load_script("benchmarks/budget_curve.py")


def _save(path: Path, step: int) -> None:
    encoder = create_encoder("vit_test", in_chans=3, img_size=32, patch_size=8)
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=3, bands=["R", "G", "B"],
                        sensor="rgb", mean=None, std=None, gsd=None,
                        source=f"rsmae mae pretraining, student encoder, global step {step}")
    save_backbone(encoder, path, meta)


def test_snapshots_by_step_with_the_final_file_and_a_stride(tmp_path: Path) -> None:
    for step in (0, 750, 1500, 2250):
        _save(tmp_path / "backbones" / f"step{step:07d}.safetensors", step)
    _save(tmp_path / "backbone.safetensors", 2500)
    assert [s for s, _ in budget.snapshots(tmp_path)] == [0, 750, 1500, 2250, 2500]
    assert [s for s, _ in budget.snapshots(tmp_path, every=1500)] == [0, 1500, 2500]
    assert budget.snapshots(tmp_path)[-1][1].name == "backbone.safetensors"


def test_a_folder_without_backbones_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no backbones"):
        budget.snapshots(tmp_path)


def test_tables_call_a_difference_only_outside_the_interval() -> None:
    n = 200
    def rows(correct: list[int]) -> list[dict]:
        return [{"protocol": p, "image": i, "correct": c, "choice": "pool=mean l2=0.01"}
                for p in ("linear", "knn") for i, c in enumerate(correct)]
    floors = {budget.RANDOM: rows([1] * 100 + [0] * 100), budget.SPECTRAL: rows([1] * 101 + [0] * 99),
              budget.RCF: rows([1] * 150 + [0] * 50)}
    results = {("same", 1500): rows([1] * 100 + [0] * 100), ("better", 1500): rows([1] * 180 + [0] * 20)}
    lines, sentences = budget.tables(results, floors, n)
    assert any(line.startswith("| better | 1500 | 90.0 [") for line in lines)
    text = "\n".join(sentences)
    assert "No clear difference between same and random init" in text
    assert "better is higher than random init by 40.0 points" in text
    assert "- linear, better at step 1500: better is higher than RCF floor by 15.0 points" in text
    assert "| RCF floor | 0 | 75.0 [" in "\n".join(lines)
    assert "Between the runs' last snapshots, linear probe (1 pair; Bonferroni: each interval at 95 %" in text
    assert "- knn: same is lower than better by 40.0 points (paired 95 % CI" in text
