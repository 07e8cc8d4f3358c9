"""The sweep compared at equal training loss (issue 21): checkpoints along training, the snapshot nearest a
common level, per-run recipes with seeds and checkpoints, and the second table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from rsmae.errors import LandscapeError
from rsmae.experiments import sweep
from rsmae.landscape import Surface
from rsmae.landscape.equal_loss import (
    Snapshot,
    checkpoints,
    choose_snapshot,
    common_level,
    loss_at,
    training_curve,
    with_checkpoints,
)
from rsmae.landscape.report import Measures
from rsmae.landscape.study import StudyResult
from tests.conftest import ROOT, load_script

bench = load_script("benchmarks/landscape_sweep.py")


def _run(folder: Path, losses: dict[int, float], saved: list[int]) -> Path:
    """A run folder as the CSV logger and ModelCheckpoint leave it (the checkpoints are empty files)."""
    (folder / "checkpoints").mkdir(parents=True)
    lines = ["epoch,step,train/loss,lr-AdamW"] + [f"0,{s},{v},0.001" for s, v in losses.items()]
    lines.insert(2, "0,0,,0.001")  # a row of another metric: no loss
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    for step in saved:
        (folder / "checkpoints" / f"step{step:07d}.ckpt").write_bytes(b"")
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    return folder


def test_snapshot_nearest_the_common_level(tmp_path: Path) -> None:
    fast = _run(tmp_path / "fast", {s: 1.0 - 0.01 * s for s in range(0, 64, 4)}, [16, 32, 48])
    curve = training_curve(fast)
    assert loss_at(curve, 20, window=2) == pytest.approx((0.84 + 0.80) / 2)
    ckpts = checkpoints(fast, final_step=64)
    assert sorted(ckpts) == [16, 32, 48, 64] and ckpts[64].name == "last.ckpt"
    level = common_level({"fast": loss_at(curve, 64, 1), "slow": 0.7})
    assert level == pytest.approx(0.7)  # the worst final loss
    snap = choose_snapshot(curve, ckpts, level, window=1)
    assert (snap.step, snap.path.name) == (32, "step0000032.ckpt") and snap.loss == pytest.approx(0.68)
    assert common_level({"a": 0.9}, level=0.5) == 0.5
    with pytest.raises(LandscapeError, match="metrics.csv"):
        training_curve(tmp_path)


def test_recipe_keeps_every_checkpoint_and_the_seed(tmp_path: Path) -> None:
    recipe = yaml.safe_load((ROOT / "configs/bench/pretrain/base.yaml").read_text())
    kept = with_checkpoints(recipe, 8)
    (ckpt,) = [c for c in kept["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpt["init_args"]["every_n_train_steps"] == 8 and ckpt["init_args"]["save_top_k"] == -1
    assert ckpt["init_args"]["save_last"] and kept["model"] == recipe["model"]
    assert recipe["trainer"]["callbacks"][0]["init_args"]["save_top_k"] == 1  # the recipe itself untouched
    cfg = yaml.safe_load((ROOT / "configs/landscape/sweep-cpu-small.yaml").read_text())
    cfg["out"] = str(tmp_path / "out")
    runs = sweep.expand(cfg)
    assert len(runs) == 3 * len(cfg["runs"])
    assert (runs[1]["name"], runs[1]["model"], runs[1]["seed"]) == ("AdamW b16 s1", "AdamW b16", 1)
    run_cfg = sweep.run_config(runs[1], cfg, Path(cfg["out"]))
    path = Path(run_cfg["pretrain_config"])
    written = yaml.safe_load(path.read_text())
    assert written["seed_everything"] == 1
    every = cfg["checkpoint_every_samples"] // runs[1]["batch"]
    assert written["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == every
    before = path.stat().st_mtime_ns
    assert sweep.run_config(runs[1], cfg, Path(cfg["out"])) == run_cfg and path.stat().st_mtime_ns == before
    old = {k: v for k, v in cfg.items() if k not in ("seeds", "checkpoint_every_samples")}
    assert sweep.run_config(sweep.expand(old)[0], old, Path(cfg["out"])) is old  # old sweeps: shared recipe


def test_sweep_snapshots_and_the_equal_loss_table(tmp_path: Path) -> None:
    cfg = {"equal_loss": {"level": None, "window": 1}}
    runs = [{"name": "AdamW b16", "steps": 64}, {"name": "AdamW b64", "steps": 16}]
    _run(tmp_path / "adamw_b16", {s: 1.0 - 0.01 * s for s in range(0, 65, 4)}, [16, 32, 48, 64])
    _run(tmp_path / "adamw_b64", {s: 1.0 - 0.02 * s for s in range(0, 17, 4)}, [8, 16])
    snaps = sweep.snapshots(cfg, runs, tmp_path)
    assert snaps["AdamW b64"].step == 16 and snaps["AdamW b16"].step == 32  # both near the worst final 0.68
    assert snaps["AdamW b16"].level == pytest.approx(0.68)
    for ckpt in (tmp_path / "adamw_b64" / "checkpoints").glob("step*.ckpt"):
        ckpt.unlink()
    assert sweep.snapshots(cfg, runs, tmp_path) is None  # only last.ckpt: the table needs a rerun
    row = {"run": "AdamW b16", "training_seeds": 3, "steps": 64, "lr": 1e-4, "minutes": 1.0,
           "final_loss": 0.4, "level": 0.68, "step_used": "32 32 36", "training_loss_used": 0.68,
           "objective": "recon", "loss": 0.7,
           "top_eigenvalue": 3.0, "trace": 10.0, "trace_se": 1.0, "noise_0.1": 0.01, "noise_0.1_std": 0.001,
           "mean_rise": 0.5, "mean_rise_std": 0.01}
    table = "\n".join(bench._tables([row], ["noise_0.1"]))
    assert "| step used | training loss there |" in table and "| AdamW b16 | 3 | 64 |" in table
    assert "| 32 32 36 | 0.6800 |" in table


def test_rows_aggregate_seeds_and_write_both_tables(tmp_path: Path) -> None:
    xs = np.linspace(-1, 1, 3)
    bowl = Surface(np.add.outer(xs**2, xs**2), xs, xs.copy(), {})
    runs = [{"name": f"AdamW b16 s{s}", "model": "AdamW b16", "seed": s, "optimizer": "adamw", "batch": 16,
             "steps": 64, "base_lr": 1.5e-3} for s in (0, 1)]
    records = [{"final_loss": 0.5 + 0.1 * s, "seconds": 60.0} for s in (0, 1)]
    for name in ("flatness.md", "flatness.csv"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "config.yaml").write_text("threshold: 0.1\n")
    measures = [Measures("AdamW b16", "recon", 0.6 + 0.1 * s, [bowl], seed=s) for s in (0, 1)]
    result = StudyResult(tmp_path, measures, tmp_path / "flatness.md", tmp_path / "flatness.csv")
    (row,) = bench._rows(runs, records, result)
    assert row["training_seeds"] == 2 and row["final_loss"] == pytest.approx(0.55)
    assert row["loss"] == pytest.approx(0.65)
    snaps = {r["name"]: Snapshot(8 * (1 + r["seed"]), 0.7, tmp_path / "x.ckpt", 0.7) for r in runs}
    (equal,) = bench._rows(runs, records, result, snaps)
    assert equal["step_used"] == "8 16" and equal["level"] == pytest.approx(0.7)
    cfg = {"threads": 1, "pretrain_config": "base.yaml", "samples": 1024, "store": "s.zarr",
           "warmup_fraction": 0.05, "micro_batch": 32}
    bench.write(cfg, [row], result, tmp_path / "res", 1.0, "sweep.yaml", ([equal], result))
    md = (tmp_path / "res" / "landscape_sweep.md").read_text()
    assert "## At equal training loss" in md and "| 8 16 | 0.7000 |" in md and "nearest 0.7000" in md
    assert "### Which runs are flatter, at equal training loss" in md
    assert (tmp_path / "res" / "study_equal_loss" / "flatness.md").is_file()
    assert f"; commit {bench.git_commit(bench.MEASURED)}" in md
    assert (tmp_path / "res" / "landscape_sweep_equal_loss.csv").is_file()
    bench.write(cfg, [row], result, tmp_path / "res", 1.0, "sweep.yaml")
    md = (tmp_path / "res" / "landscape_sweep.md").read_text()
    assert "Not measured: the runs kept no intermediate checkpoint" in md


def test_the_summary_calls_a_run_flatter_only_beyond_the_spread(tmp_path: Path) -> None:
    xs = np.linspace(-1, 1, 5)
    bowl = np.add.outer(xs**2, xs**2)
    (tmp_path / "config.yaml").write_text("threshold: 0.1\n")

    def measures(name: str, scales: list[float]) -> list[Measures]:
        return [Measures(name, "recon", 0.6, [Surface(k * bowl, xs, xs.copy(), {})], seed=s)
                for s, k in enumerate(scales)]

    apart = StudyResult(tmp_path, measures("AdamW b256", [1.0, 1.02]) + measures("AdamW b16", [2.0, 2.05]),
                        tmp_path / "f.md", tmp_path / "f.csv")
    (said,) = bench.summary(apart)
    assert said.startswith("- On the recon loss, AdamW b256 is flatter than AdamW b16")
    close = StudyResult(tmp_path, measures("AdamW b256", [1.0, 2.0]) + measures("AdamW b16", [1.2, 2.1]),
                        tmp_path / "f.md", tmp_path / "f.csv")
    (said,) = bench.summary(close)
    assert "AdamW b256 and AdamW b16 are indistinguishable in flatness" in said
