"""The transfer grid: one result file per cell, resume without recomputing, tables from finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from rsmae.bands import get_sensor
from rsmae.evaluation.data import backbone_meta
from rsmae.evaluation.features import file_digest
from rsmae.experiments import (
    GridConfig,
    cell_path,
    grid,
    inits,
    manifest_from_paths,
    plan_cells,
    run_cell,
    run_grid,
)
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.stats import wilson_interval
from tests.conftest import EUROSAT, load_script

S2 = list(get_sensor("s2-l1c").names)


def _backbone(path: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1000.0] * 13, std=[600.0] * 13, gsd=10.0)
    save_backbone(enc, path, meta)
    return {"path": str(path), "sha256": file_digest(path), "steps": 0, "corpus": "none", "images": 0,
            "scenes": 0, "bands": S2, "sensor": "s2-l1c", "leak_check": {"store_files": 0}}


def _config(tmp: Path, **changes: object) -> GridConfig:
    return GridConfig.from_dict({"config_path": "test.yaml", "inits": ["random", "rs_mae"], "seeds": [0, 1],
            "data": {"train_root": str(EUROSAT / "train"), "test_root": str(EUROSAT / "test")},
            "grid": [{"protocols": ["knn", "linear"], "fractions": ["100%"]},
                     {"protocols": ["linear"], "fractions": ["5-shot"]}],
            "cells_dir": str(tmp / "cells"), "cache_dir": str(tmp / "cache"), "backbones_dir": str(tmp),
                                 **changes})


@pytest.mark.slow
def test_grid_resumes_and_recomputes_only_changed_backbones(tmp_path: Path) -> None:
    manifest = {"random": _backbone(tmp_path / "random.safetensors", 0),
                "rs_mae": _backbone(tmp_path / "rs.safetensors", 1)}
    config = _config(tmp_path)
    cells = plan_cells(config)
    assert len(cells) == 2 * 2 * 2 + 2 * 1 * 2
    assert run_grid(config, cells[:5], manifest, log=lambda s: None) == 5  # "killed" after 5
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*.json")}
    assert len(first) == 5
    assert run_grid(config, cells, manifest, log=lambda s: None) == len(cells) - 5
    for path, mtime in first.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    assert run_grid(config, cells, manifest, log=lambda s: None) == 0
    manifest["rs_mae"] = _backbone(tmp_path / "rs.safetensors", 2)  # the file changed: its cells rerun
    assert run_grid(config, cells, manifest, log=lambda s: None) == len(cells) // 2
    result = json.loads(cell_path(config.cells_dir, cells[0]).read_text())
    assert {"accuracy", "trainable_params", "wall_s", "fingerprint", "init", "seed"} <= set(result)


@pytest.mark.slow
def test_tables_and_plots_from_finished_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = {"random": _backbone(tmp_path / "random.safetensors", 0),
                "rs_mae": _backbone(tmp_path / "rs.safetensors", 1)}
    config = _config(tmp_path, grid=[{"protocols": ["knn", "linear"], "fractions": ["100%"]},
                                     {"protocols": ["linear"], "fractions": ["5-shot", "25%"]}])
    cells = plan_cells(config)
    few = [c for c in cells if c["fraction"] != "100%" and c["seed"] == 0 and c["init"] == "random"]
    run_grid(config, cells[:4] + few, manifest, log=lambda s: None)
    transfer_tables = load_script("benchmarks/transfer_tables.py")
    figures = {}
    save = transfer_tables._save

    def keep(fig: Figure, path: Path) -> Path:
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(transfer_tables, "_save", keep)
    paths = transfer_tables.write_tables(config, cells, manifest, tmp_path / "results")
    md = (tmp_path / "results" / "transfer_eurosat.md").read_text()
    assert "6 of 16 cells done" in md and "± " in md and "published" in md.lower() and "not run" in md
    csv_path = tmp_path / "results" / "transfer_eurosat.csv"
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("init,protocol,fraction,accuracy_mean") and len(rows) == 1 + 6  # seed 0 first
    assert all(p.is_file() for p in paths) and any(p.suffix == ".png" for p in paths)
    # 25 % of the training split is fewer labels than 5-shot: the x axis follows the label count
    fractions = figures["transfer_fractions.png"].axes[0]
    assert [t.get_text() for t in fractions.get_xticklabels()] == ["25 % (45)", "5-shot (50)", "100 % (172)"]
    assert set(figures) == {"transfer_tuned_blocks.png", "transfer_fractions.png"}  # no probe.json: no curve
    assert figures["transfer_fractions.png"].legends  # below the panels, off the data
    for fig in figures.values():
        assert all(ax.get_legend() is None for ax in fig.axes)
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
        titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
        assert any("95 % Wilson interval over the 54 test images" in t for t in titles)
    back = transfer_tables.rows_from_csv(csv_path)  # the plots can be redrawn from the CSV alone
    assert len(back) == 6 and {r["n_test"] for r in back.values()} == {54}


def test_plot_bars_fraction_order_and_old_csvs(tmp_path: Path) -> None:
    transfer_tables = load_script("benchmarks/transfer_tables.py")
    row = {"mean": 57.41, "n_test": 54}
    low, high = wilson_interval(31, 54)  # 57.41 % of 54 images is 31
    assert transfer_tables.wilson_points(row) == pytest.approx((57.41 - 100 * low, 100 * high - 57.41))
    old = tmp_path / "old.csv"  # written before the CSV had an n_test column
    old.write_text("init,protocol,fraction,accuracy_mean,accuracy_std,seeds,n_train\n"
                   "random,knn,100%,48.15,0.00,3,172\nrandom,knn,5-shot,40.12,2.14,3,50\n"
                   "random,knn,25%,40.12,7.48,3,45\n")
    with pytest.raises(ValueError, match="n_test"):
        transfer_tables.rows_from_csv(old)
    rows = transfer_tables.rows_from_csv(old, n_test=54)
    expected = {"mean": 40.12, "std": 2.14, "n": 3, "n_train": 50, "n_test": 54}
    assert rows[("random", "knn", "5-shot")] == expected
    order = transfer_tables.fraction_order(rows, ["knn"], ["100%", "5-shot", "25%"])
    assert order == [("25%", 45), ("5-shot", 50), ("100%", 172)]


def test_backbones_given_by_path_and_a_derived_random_init(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(inits, "ROOT", tmp_path)
    (tmp_path / "runs" / "v1").mkdir(parents=True)
    _backbone(tmp_path / "runs" / "v1" / "backbone.safetensors", 3)
    config = _config(tmp_path, backbones={"demo_mae": "runs/v*/backbone.safetensors"},
                     inits=["random", "demo_mae"])
    manifest = manifest_from_paths(config)
    assert set(manifest) == {"random", "demo_mae"}
    assert manifest["random"]["sha256"] != manifest["demo_mae"]["sha256"]
    meta = backbone_meta(manifest["random"]["path"])
    assert meta.bands == S2 and meta.mean == [1000.0] * 13 and "random init" in meta.source
    config.backbones = {"demo_mae": "runs/none*/backbone.safetensors"}
    with pytest.raises(FileNotFoundError, match="pretrain first"):
        manifest_from_paths(config)


def test_a_cell_fails_before_its_work_when_its_key_cannot_be_made(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    ran = []
    monkeypatch.setattr(grid, "_classification", lambda *a: ran.append(a) or {})

    def broken(*_):
        raise ImportError("cannot import name 'X' (a module edited under a running grid)")

    monkeypatch.setattr(grid, "fingerprint", broken)
    cell = {"init": "random", "protocol": "knn", "fraction": "100%", "seed": 0}
    with pytest.raises(ImportError, match="cannot import name"):
        run_cell(cell, {"path": None}, GridConfig(cells_dir=str(tmp_path)))
    assert ran == [] and not list(tmp_path.iterdir())  # nothing evaluated, nothing written


def test_replot_names_the_bad_csv_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    transfer_tables = load_script("benchmarks/transfer_tables.py")
    missing = tmp_path / "nope.csv"
    assert transfer_tables.main(["--replot-from-csv", str(missing), "--n-test", "54"]) == 2
    assert f"error: {missing}:" in capsys.readouterr().err
    old = tmp_path / "old.csv"
    old.write_text("init,protocol,fraction,accuracy_mean,accuracy_std,seeds,n_train\nrandom,knn,100%,48.15,0,3,172\n")
    assert transfer_tables.main(["--replot-from-csv", str(old)]) == 2
    assert "has no n_test column" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))  # nothing half-written
