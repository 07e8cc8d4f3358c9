"""Every benchmark table names its commit, command and machine: in the Markdown header and each CSV row.

The writers of the transfer tables, the transfer backbones, the pretraining speed and the change-detection
speed are called directly on small inputs; the numbers in them do not matter here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rsmae.experiments import GridConfig, plan_cells
from rsmae.experiments.cells import cell_path, fingerprint
from rsmae.files import atomic_write_json
from rsmae.provenance import git_commit
from tests.conftest import EUROSAT, load_script

# A backbone pretrained by the benchmark, as the manifest records it (no file is read by the writers).
MANIFEST = {"rs_mae": {"path": "runs/transfer/rs_mae/backbone.safetensors", "sha256": "ab" * 32,
                       "steps": 1500, "corpus": "Sentinel-2 L1C", "images": 1331, "scenes": 25}}


def _header(text: str) -> dict[str, str]:
    """The ``- key: value`` lines between the title and the first blank line after them."""
    lines = text.splitlines()
    assert lines[0].startswith("# ") and lines[1] == "", lines[:2]
    head = {}
    for line in lines[2:]:
        if not line.startswith("- "):
            break
        key, _, value = line[2:].partition(": ")
        head[key] = value
    return head


def _check(md: Path, csv_path: Path, command: str) -> None:
    """Commit (this checkout's, maybe marked dirty), command and machine in the header and every CSV row."""
    head = _header(md.read_text())
    assert head["commit"].startswith(git_commit()), head
    assert head["command"] == f"`{command}`" and head["machine"], head
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for row in rows:
        assert row["commit"] == head["commit"] and f"`{row['command']}`" == head["command"]
        assert row["machine"] and row["machine"] in head["machine"]


@pytest.mark.filterwarnings("ignore:No artists with labels:UserWarning")  # plots without curves
def test_transfer_tables_name_commit_command_machine(tmp_path: Path) -> None:
    config = GridConfig.from_dict({
        "config_path": "configs/bench/demo.yaml", "inits": ["rs_mae"], "seeds": [0],
        "data": {"train_root": str(EUROSAT / "train"), "test_root": str(EUROSAT / "test")},
        "grid": [{"protocols": ["knn"], "fractions": ["100%"]}], "backbones_dir": str(tmp_path / "bb"),
        "cells_dir": str(tmp_path / "cells"), "cache_dir": str(tmp_path / "cache")})
    [cell] = plan_cells(config)
    result = {**cell, "accuracy": 0.5, "trainable_params": 0, "wall_s": 1.0, "n_train": 216, "n_test": 54,
              "fingerprint": fingerprint(cell, MANIFEST["rs_mae"], config)}
    atomic_write_json(cell_path(config.cells_dir, cell), result)
    transfer_tables = load_script("benchmarks/transfer_tables.py")
    transfer_tables.write_tables(config, [cell], MANIFEST, tmp_path / "results")
    _check(tmp_path / "results" / "transfer_eurosat.md", tmp_path / "results" / "transfer_eurosat.csv",
           "python benchmarks/transfer.py --config configs/bench/demo.yaml")


def test_transfer_backbones_name_commit_command_machine(tmp_path: Path) -> None:
    transfer_backbones = load_script("benchmarks/transfer_backbones.py")
    command = "python benchmarks/transfer_backbones.py --steps 2"
    md = transfer_backbones.write_results(MANIFEST, tmp_path, command)
    _check(md, tmp_path / "transfer_backbones.csv", command)


def test_pretrain_speed_names_commit_command_machine(tmp_path: Path) -> None:
    bench_pretrain = load_script("benchmarks/bench_pretrain.py")
    prov = bench_pretrain.provenance(["--steps", "1"])
    rows = [{"method": "MAE", "precision": "fp32", "img/s (best)": "1.00"}]
    bench_pretrain.write(tmp_path / "pretrain.md", rows, {"bf16 flags": "none"}, {"fp32": 10.0}, [], prov)
    _check(tmp_path / "pretrain.md", tmp_path / "pretrain.csv",
           ".venv/bin/python benchmarks/bench_pretrain.py --steps 1")


def test_change_speed_names_commit_command_machine(tmp_path: Path) -> None:
    bench_change = load_script("benchmarks/bench_change.py")
    prov = bench_change.provenance(["--threads", "1"])
    rows = [{"part": "training step", "precision": "fp32", "model": "fc-siam-diff", "variant": "scratch",
             "best_s": 0.1, "median_s": 0.2, "windows": "", "pairs_per_s": 80.0, "gflop_per_pair": 1.0,
             "mfu": 0.5}]
    bench_change.write(rows, ["native bf16: False"], tmp_path, prov)
    _check(tmp_path / "change_speed.md", tmp_path / "change_speed.csv",
           ".venv/bin/python benchmarks/bench_change.py --threads 1")
