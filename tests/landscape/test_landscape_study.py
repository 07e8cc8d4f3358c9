"""Landscape study end to end: model files (MAE / RC-MAE checkpoints, backbone, classifier) on the real
EuroSAT store -> surfaces, Hessian, noise, figures, table and summary; resume; the pipeline's exit codes;
sharpness measures and figures on hand-made surfaces."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from rsmae.data import ShardDataset, describe_data
from rsmae.errors import LandscapeError, WeightsError
from rsmae.landscape import Surface
from rsmae.landscape.config import LandscapeConfig, ModelSpec
from rsmae.landscape.inputs import load_model
from rsmae.landscape.plots import plot_comparison, plot_slices
from rsmae.landscape.report import Measures, sharpness, summarise, table_rows
from rsmae.landscape.study import run_study
from rsmae.models import save_backbone
from rsmae.provenance import git_commit
from rsmae.tasks import PretrainTask
from rsmae.tasks.finetune import PooledHead
from tests.conftest import EUROSAT, ROOT, load_script

landscape = load_script("pipelines/landscape.py")


def _bowl(scale: float, size: int = 5) -> Surface:
    xs = np.linspace(-1, 1, size)
    xx, yy = np.meshgrid(xs, xs)
    return Surface(1.0 + scale * (xx**2 + yy**2), xs, xs.copy(), {})


def test_sharpness_and_summary_on_known_bowls(tmp_path: Path) -> None:
    s = sharpness(_bowl(0.5), threshold=0.1)
    assert s["mean_rise"] == pytest.approx(0.5 * 2 * np.mean(np.linspace(-1, 1, 5) ** 2))
    # below the grid step (0.5): the analytic 0.447 less the bilinear overshoot of a 5-point grid
    assert 0.25 < s["basin_radius"] < 0.5 and not s["basin_open"]
    assert sharpness(_bowl(0.01), threshold=0.1)["basin_open"]
    flat = Measures("flat", "recon", 1.0, [_bowl(0.2), _bowl(0.25)])
    sharp = Measures("sharp", "recon", 1.0, [_bowl(1.0), _bowl(1.1)])
    rows = table_rows([sharp, flat], threshold=0.1)
    (sentence,) = summarise(rows)
    assert sentence.startswith("On the recon loss, flat is flatter than sharp")
    assert "2 direction seeds" in sentence
    assert "within the spread" not in sentence
    close = Measures("close", "recon", 1.0, [_bowl(0.21), _bowl(0.3)])
    (tie,) = summarise(table_rows([flat, close], threshold=0.1))
    assert tie.startswith("On the recon loss, flat and close are indistinguishable in flatness")
    assert "flatter" not in tie and "within the spread over 2 direction seeds" in tie
    fig = plot_comparison({"flat": flat.surfaces[0], "sharp": sharp.surfaces[0]}, tmp_path / "c.png")
    assert fig.stat().st_size > 1000
    assert plot_slices({"flat": flat.surfaces[0]}, tmp_path / "s.png").is_file()


def _checkpoint(path: Path, method: str, info: dict, seed: int) -> Path:
    torch.manual_seed(seed)
    task = PretrainTask(method=method, preset="vit_test", patch_size=16, img_size=64, in_chans=13,
                        data_info=info)
    with torch.no_grad():  # an RC-MAE student that has moved away from its teacher
        for p in task.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory, eurosat_store: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("landscape_models")
    info = describe_data(ShardDataset(eurosat_store))
    files = {"MAE": _checkpoint(tmp / "mae.ckpt", "mae", info, 0),
             "RC-MAE": _checkpoint(tmp / "rcmae.ckpt", "rcmae", info, 1)}
    task = PretrainTask.load_from_checkpoint(files["MAE"], map_location="cpu")
    files["backbone"] = save_backbone(task.encoder(), tmp / "backbone.safetensors", task.backbone_meta())
    torch.manual_seed(0)
    pooled = PooledHead(64, 10, pool="avg")  # as pipelines/evaluate.py --protocol full --out saves it
    save_file(pooled.state_dict(), str(tmp / "head.safetensors"), metadata={"pool": "avg"})
    files["head"] = tmp / "head.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({"weight": 0.1 * torch.randn(10, 64, generator=gen), "bias": torch.zeros(10)},
              str(tmp / "linear_head.safetensors"))
    files["linear_head"] = tmp / "linear_head.safetensors"
    return files


def test_classifier_files_load_as_saved(model_files: dict[str, Path]) -> None:
    x = torch.randn(2, 13, 64, 64)
    for head, pool in (("head", "avg"), ("linear_head", "cls")):
        spec = ModelSpec("sup", "classifier", str(model_files["backbone"]), head=str(model_files[head]))
        model = load_model(spec).module.eval()
        assert model.head.pool == pool
        tokens = model.encoder.forward_features(x)
        with torch.no_grad():
            feats = tokens[:, 0] if pool == "cls" else model.head.norm(tokens[:, 1:].mean(1))
            torch.testing.assert_close(model(x), model.head.fc(feats))
    bad = ModelSpec("sup", "classifier", str(model_files["backbone"]), head=str(model_files["backbone"]))
    with pytest.raises(WeightsError, match="fc.weight"):
        load_model(bad)


def _config(tmp: Path, files: dict[str, Path], store: Path) -> dict:
    return {
        "out": str(tmp / "out"),
        "models": [{"name": "MAE", "kind": "pretrain", "path": str(files["MAE"])},
                   {"name": "RC-MAE", "kind": "pretrain", "path": str(files["RC-MAE"]), "weights": "teacher"},
                   {"name": "supervised", "kind": "classifier", "path": str(files["backbone"]),
                    "head": str(files["head"])}],
        "objectives": ["recon", "pretrain", "probe", "classification"],
        "data": {"store": str(store), "pretrain_samples": 4, "batch_size": 10, "eurosat": str(EUROSAT),
                 "probe_samples": 10, "probe_steps": 10},
        "grid": {"size": 3},
        "directions": {"seeds": [0, 1]},
        "hessian": {"top_k": 1, "iters": 2, "trace_samples": 1},
        "noise": {"sigmas": [0.0, 0.1], "draws": 2},
        "interpolate": [["MAE", "RC-MAE"]],
        "chunk_size": 3,
        "plots_per_model": False,
    }


@pytest.mark.slow
def test_study_writes_surfaces_figures_table_and_resumes(tmp_path: Path, model_files: dict[str, Path],
                                                         eurosat_store: Path) -> None:
    cfg = LandscapeConfig.from_dict(_config(tmp_path, model_files, eurosat_store))
    result = run_study(cfg)
    pairs = [(m.model, m.objective) for m in result.measures]
    assert pairs == [("MAE", "recon"), ("MAE", "pretrain"), ("MAE", "probe"), ("RC-MAE", "recon"),
                     ("RC-MAE", "pretrain"), ("RC-MAE", "probe"), ("supervised", "probe"),
                     ("supervised", "classification")]
    mae_recon, mae_pre = result.measures[0], result.measures[1]
    assert mae_recon.loss == pytest.approx(mae_pre.loss)  # an MAE's own loss is its reconstruction loss
    assert result.measures[4].loss > result.measures[3].loss  # RC-MAE adds the consistency term
    for m in result.measures:
        assert len(m.surfaces) == 2 and m.surfaces[0].values.shape == (3, 3)
        assert m.surfaces[0].centre == pytest.approx(m.loss, rel=1e-5)
        assert m.noise is not None and m.noise.increases[0] == pytest.approx(0.0, abs=1e-5)
        assert m.eigen is not None and len(m.eigen.history[0]) >= 2
    names = {f.name for f in result.figures}
    assert {"comparison_recon.png", "comparison_probe.png", "slices_pretrain.png", "hessian_probe.png",
            "noise_classification.png", "MAE__RC-MAE.png"} <= names
    csv = (result.out / "flatness.csv").read_text().splitlines()
    assert len(csv) == 9 and csv[0].startswith("model,objective,loss,top_eigenvalue")
    table = result.table.read_text()
    assert "| RC-MAE | pretrain |" in table and "## Summary" in table
    assert f"; commit {git_commit(('rsmae',))}" in table and "- command: `" in table  # provenance
    assert "| MAE -> RC-MAE / recon |" in table  # the straight line's barrier row
    assert sum(s.startswith("On the probe loss") for s in result.summary) == 3  # every pair of 3 models
    record = json.loads((result.out / "results.json").read_text())
    line = record["lines"]["MAE -> RC-MAE / recon"]
    ends = [line["t"].index(t) for t in (0.0, 1.0)]
    got = [line["loss"][i] for i in ends]  # t = 0 is the MAE, t = 1 the RC-MAE student
    assert got == pytest.approx([mae_recon.loss, result.measures[3].loss], rel=1e-4)  # float32 line


def test_pipeline_exit_codes(tmp_path: Path, model_files: dict[str, Path], eurosat_store: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, model_files, eurosat_store)
    cfg.update(models=cfg["models"][:1], objectives=["recon"], interpolate=[],
               hessian={"enabled": False}, noise={"enabled": False})
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg))
    assert landscape.main(["--config", str(good), "--grid", "2"]) == 0
    out = capsys.readouterr().out
    assert "| MAE | recon |" in out and "comparison_recon.png" in out
    # a second run reads every surface row from the cache and writes the same table
    cache = tmp_path / "out" / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("row_*.npy")}
    csv = (tmp_path / "out" / "flatness.csv").read_text()
    assert len(before) == 4 and landscape.main(["--config", str(good), "--grid", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("row_*.npy")} == before
    assert (tmp_path / "out" / "flatness.csv").read_text() == csv
    capsys.readouterr()
    cfg["models"][0]["path"] = str(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert landscape.main(["--config", str(bad)]) == 2
    assert "missing.ckpt not found" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**cfg, "grid": {"sise": 3}}))
    assert landscape.main(["--config", str(typo)]) == 2
    assert "Group 'grid' does not accept option 'sise'" in capsys.readouterr().err
    with pytest.raises(LandscapeError, match="unknown objectives"):
        LandscapeConfig.from_dict({**cfg, "objectives": ["hessian"]})


def test_study_logs_progress_off_a_terminal(tmp_path: Path, model_files: dict[str, Path],
                                            eurosat_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path, model_files, eurosat_store)
    cfg.update(models=cfg["models"][:1], objectives=["recon", "classification"], interpolate=[],
               hessian={"enabled": False}, noise={"sigmas": [0.0, 0.1], "draws": 2}, grid={"size": 2})
    study = LandscapeConfig.from_dict(cfg)  # classification does not apply to an MAE: 2 x 2 rows + noise
    for _ in range(2):  # computed, then read from the cache
        caplog.clear()
        with caplog.at_level("INFO", logger="rsmae.progress"):
            run_study(study)
        lines = [r.getMessage() for r in caplog.records if r.name == "rsmae.progress"]
        assert lines and all(line.startswith("landscape: ") for line in lines)
        assert lines[-1].startswith("landscape: 5/5 step (100 %), ")
    caplog.clear()
    with caplog.at_level("INFO", logger="rsmae.progress"):
        run_study(study, progress=False)
    assert not [r for r in caplog.records if r.name == "rsmae.progress"]


def test_shipped_config_parses() -> None:
    cfg = LandscapeConfig.from_yaml(ROOT / "configs" / "landscape" / "cpu-small.yaml")
    assert [m.kind for m in cfg.models] == 6 * ["pretrain"] + 3 * ["classifier"]  # 3 training seeds each
    assert {m.seed for m in cfg.models} == {0, 1, 2} and cfg.noise.draws >= 20
    assert cfg.data.probe_eval_split == "test"


def test_own_objectives_are_not_compared_across_models() -> None:
    mae = Measures("MAE", "pretrain", 1.0, [_bowl(0.2), _bowl(0.25)])
    rcmae = Measures("RC-MAE", "pretrain", 1.0, [_bowl(1.0), _bowl(1.1)])
    (sentence,) = summarise(table_rows([mae, rcmae], threshold=0.1))
    assert "flatter" not in sentence and "own objective (MAE, RC-MAE)" in sentence
