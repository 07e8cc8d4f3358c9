"""The change-detection table writer: per-dataset sections, and one table for leave-cities-out folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rsmae.experiments import GridConfig, cell_path, fingerprint, load_config, plan_cells, run_grid
from tests.conftest import DATA, ROOT, load_script

change_tables = load_script("benchmarks/change_tables.py")

MANIFEST = {"random": {"sha256": "a"}, "rs_mae": {"sha256": "b"}, "rs_rcmae": {"sha256": "c"}}


def _write_cell(config: dict, cell: dict, f1: float) -> None:
    """A finished cell as the grid writes it (the fingerprint makes it count as done)."""
    path = cell_path(config.cells_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {**cell, "f1": f1, "iou": f1 / 2, "precision": f1, "recall": f1, "accuracy": 0.9,
              "wall_s": 60.0, "fingerprint": fingerprint(cell, MANIFEST[cell["init"]], config)}
    path.write_text(json.dumps(result))


def _config(tmp: Path, cities: list[str], inits: tuple[str, ...] = ("random", "rs_mae")) -> dict:  # YAML
    datasets = {f"oscd-{c}": {"task": "oscd", "test_root": "x", "held_out": c,
                              "settings": {"test_cities": [c]}} for c in cities}
    return {"config_path": "loco.yaml", "task": "change", "results_name": "change_loco", "seeds": [0],
            "inits": list(inits), "datasets": datasets, "cells_dir": str(tmp / "cells"),
            "grid": [{"protocols": ["frozen"], "datasets": list(datasets)}]}


def test_folds_get_one_table_with_a_column_per_city_and_the_mean_over_cities(tmp_path: Path) -> None:
    config = GridConfig.from_dict(_config(tmp_path, ["pisa", "beihai", "mumbai"]))
    cells = plan_cells(config)
    scores = {"pisa": 0.2, "beihai": 0.4, "mumbai": 0.6}
    for cell in cells:
        if not (cell["init"] == "rs_mae" and cell["dataset"] == "oscd-mumbai"):  # one fold unfinished
            _write_cell(config, cell, scores[cell["dataset"][5:]] + (0.1 if cell["init"] == "rs_mae" else 0))
    paths = change_tables.write_change_tables(config, cells, MANIFEST, tmp_path / "results")
    md = (tmp_path / "results" / "change_loco.md").read_text()
    assert "5 of 6 cells done" in md and "## Leave one city out" in md
    assert "| init | protocol | pisa | beihai | mumbai | mean over cities | vs random init, paired |" in md
    assert "| random init | frozen | 20.0 | 40.0 | 60.0 | 40.0 ± 20.0 (3 cities) | — |" in md
    # paired by city with random init: +10 in both cities it has, none worse; every resample the same
    row = ("| our MAE (Sentinel-2) | frozen | 30.0 | 50.0 | — | 40.0 ± 14.1 (2 cities) "
           "| +10.0 [+10.0, +10.0], 2 / 0 |")
    assert row in md
    assert "- our MAE (Sentinel-2) (frozen) is higher than random init by 10.0 F1 points" in md
    assert "over 2 cities; Wilcoxon signed-rank p = 0.5)" in md  # 2 cities: the exact test cannot call it
    assert "## oscd-pisa" not in md and "- splits:" not in md  # folds are not listed as datasets
    assert "commit " in md and "one row per cell" in md
    assert not any(p.suffix == ".png" for p in paths)  # no tuned-blocks plot of frozen-only folds
    rows = list(csv.DictReader((tmp_path / "results" / "change_loco.csv").open()))
    assert len(rows) == 5 and {r["held_out"] for r in rows} == {"pisa", "beihai", "mumbai"}
    pisa = next(r for r in rows if r["init"] == "rs_mae" and r["held_out"] == "pisa")
    assert (pisa["seed"], pisa["f1"], pisa["command"]) == ("0", "30.00", "python benchmarks/change_tables.py "
                                                           "--config loco.yaml")
    assert pisa["commit"] and "cores" in pisa["machine"]


def test_a_difference_within_the_spread_of_cities_is_not_called(tmp_path: Path) -> None:
    config = GridConfig.from_dict(_config(tmp_path, ["pisa", "beihai", "mumbai", "hongkong"]))
    cells = plan_cells(config)
    shift = {"pisa": 0.1, "beihai": -0.1, "mumbai": 0.05, "hongkong": -0.02}  # signs disagree
    for cell in cells:
        city = cell["dataset"][5:]
        _write_cell(config, cell, 0.4 + (shift[city] if cell["init"] == "rs_mae" else 0.0))
    change_tables.write_change_tables(config, cells, MANIFEST, tmp_path / "results")
    md = (tmp_path / "results" / "change_loco.md").read_text()
    assert "- No clear difference between our MAE (Sentinel-2) (frozen) and random init: +0.8 F1 points" in md


def test_plain_datasets_get_sections_and_a_plot(tmp_path: Path) -> None:
    config = _config(tmp_path, ["pisa"])
    config["datasets"] = {"oscd": {"task": "oscd", "test_root": "x", "train_note": "5 cities"}}
    config["grid"] = [{"protocols": ["frozen", "full"], "datasets": ["oscd"]}]
    config.pop("results_name")
    config = GridConfig.from_dict(config)
    cells = plan_cells(config)
    for cell in cells:
        _write_cell(config, cell, 0.3)
    stale = tmp_path / "results" / "change_maps" / "change_detection" / "oscd_rs_mae_frozen_pisa.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"png")
    paths = change_tables.write_change_tables(config, cells, MANIFEST, tmp_path / "results")
    assert not stale.exists()
    md = (tmp_path / "results" / "change_detection.md").read_text()
    assert "## oscd: F1 of the change class" in md and "- splits: oscd: train 5 cities" in md
    assert "| random init | 30.0 ± 0.0 (1) | 30.0 ± 0.0 (1) |" in md and "Leave one city out" not in md
    assert (tmp_path / "results" / "change_detection_f1_vs_tuned_blocks.png") in paths


@pytest.mark.parametrize("name", ["cd-cpu-small.yaml", "cd-oscd-loco.yaml"])
def test_change_configs_plan_their_cells(name: str) -> None:
    config = load_config(ROOT / "configs" / "bench" / name)
    cells = plan_cells(config)
    assert len(cells) == {"cd-cpu-small.yaml": 90, "cd-oscd-loco.yaml": 42}[name]
    for data in config.datasets.values():
        if "held_out" in data:  # a fold: the held-out city is never among its training cities
            train, test = data["settings"]["train_cities"], data["settings"]["test_cities"]
            assert test == [data["held_out"]] and data["held_out"] not in train and len(train) == 6


@pytest.mark.slow
def test_the_change_grid_resumes_without_recomputing_finished_cells(tmp_path: Path) -> None:
    levir = {"task": "levircd", "test_root": str(DATA / "levircd_samples"),
             "settings": {"test_cities": ["test_2_0000_0000"]}}
    config = {"config_path": "cd.yaml", "task": "change", "inits": ["fc_siam_diff"], "seeds": [0, 1],
              "datasets": {"levircd": levir}, "grid": [{"protocols": ["scratch"], "datasets": ["levircd"]}],
              "change": {"steps": 2, "batch_size": 2, "crop_size": 32, "overlap": 8, "maps": False},
              "cells_dir": str(tmp_path / "cells")}
    config = GridConfig.from_dict(config)
    manifest = {"fc_siam_diff": {"path": None, "sha256": None, "model": "fc-siam-diff"}}
    cells = plan_cells(config)
    assert run_grid(config, cells[:1], manifest, log=lambda s: None) == 1  # "killed" after one cell
    first = cell_path(config.cells_dir, cells[0])
    mtime = first.stat().st_mtime_ns
    assert run_grid(config, cells, manifest, log=lambda s: None) == 1  # only the missing cell runs
    assert first.stat().st_mtime_ns == mtime
    assert run_grid(config, cells, manifest, log=lambda s: None) == 0
    result = json.loads(cell_path(config.cells_dir, cells[1]).read_text())
    assert result["model"] == "fc-siam-diff" and 0.0 <= result["f1"] <= 1.0 and result["seed"] == 1


def test_every_two_inits_are_compared_by_city_with_widened_intervals(tmp_path: Path) -> None:
    inits = ("random", "rs_mae", "rs_rcmae")
    config = GridConfig.from_dict(_config(tmp_path, ["pisa", "beihai", "mumbai"], inits))
    cells = plan_cells(config)
    for cell in cells:
        _write_cell(config, cell, 0.3 + {"random": 0.0, "rs_mae": 0.1, "rs_rcmae": 0.12}[cell["init"]])
    change_tables.write_change_tables(config, cells, MANIFEST, tmp_path / "results")
    md = (tmp_path / "results" / "change_loco.md").read_text()
    assert "Between the inits (1 pair over the same 3 cities; Bonferroni: each interval at 95 %" in md
    assert ("- our MAE (Sentinel-2) (frozen) is lower than our RC-MAE (Sentinel-2) (frozen) by 2.0 F1 points "
            "(paired 95 % CI -2.0 to -2.0 over 3 cities; Wilcoxon signed-rank p = 0.25).") in md
