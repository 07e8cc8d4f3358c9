"""The pretraining configs: one base plus small overrides, composed by the CLI's own parser; each run
folder named once and reaching the loggers and the checkpoints; each file's model as before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT, ROOT, load_script
from tests.tasks.pretrain_helpers import PRETRAIN, shipped_config

pretrain = load_script("pipelines/pretrain.py")

BASE = PRETRAIN / "base.yaml"
ROOT_KEY = "${trainer.default_root_dir}"
TINY = {"preset": "vit_tiny", "patch_size": 8, "base_lr": 1.5e-3, "warmup_steps": 30}
S2 = {"patch_size": 16, "base_lr": 1.5e-4, "warmup_steps": None, "betas": [0.9, 0.95]}
RCMAE = {"method": "rcmae", "consistency_weight": 1.0, "teacher_momentum": 0.996}
# the model, data and cadence of each file before they were composed (the six complete files of f94e7a4)
EXPECTED: dict[str, dict[str, Any]] = {
    "mae_tiny": {"model": {"method": "mae", **TINY}, "batch_size": 32, "accelerator": "cpu", "every": 50},
    "rcmae_tiny": {"model": {**RCMAE, **TINY}, "batch_size": 32, "accelerator": "cpu", "every": 50},
    # issue 24: one encoder for any sensor (spectral patch embedding, band dropout per batch)
    "mae_spectral_tiny": {"model": {"method": "mae", **TINY, "patch_embed": "spectral",
                                    "band_dropout": {"p_keep_min": 0.25, "p_keep_max": 1.0}},
                          "batch_size": 32, "accelerator": "cpu", "every": 50},
    # issue 24: one run over stores of different band sets (S2 + Landsat groups, the mix ratio in the file)
    "mae_spectral_mixed_tiny": {"model": {"method": "mae", **TINY, "patch_embed": "spectral",
                                          "band_dropout": {"p_keep_min": 0.25, "p_keep_max": 1.0}},
                                "batch_size": 32, "accelerator": "cpu", "every": 50},
    "mae_vit_s16_s2": {"model": {"method": "mae", "preset": "vit_small", **S2}, "batch_size": 128,
                       "accelerator": "gpu", "every": 2000},
    "rcmae_vit_s16_s2": {"model": {**RCMAE, "preset": "vit_small", **S2}, "batch_size": 128,
                         "accelerator": "gpu", "every": 2000},
    "mae_vit_b16_s2": {"model": {"method": "mae", "preset": "vit_base", **S2}, "batch_size": 64,
                       "accelerator": "gpu", "every": 2000},
    "rcmae_vit_b16_s2": {"model": {**RCMAE, "preset": "vit_base", **S2}, "batch_size": 64,
                         "accelerator": "gpu", "every": 2000},
}


def _printed(capsys: pytest.CaptureFixture[str], *configs: Path, extra: tuple[str, ...] = ()) -> dict:
    args = [a for c in configs for a in ("--config", str(c))]
    with pytest.raises(SystemExit) as done:
        pretrain.main(["fit", *args, *extra, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _callback(cfg: dict, name: str) -> dict:
    return next(c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith(name))


def test_every_override_is_listed() -> None:
    assert sorted(p.stem for p in PRETRAIN.glob("*.yaml")) == sorted([*EXPECTED, "base"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_base_plus_override_parses_as_before(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _printed(capsys, BASE, PRETRAIN / f"{name}.yaml")
    want = EXPECTED[name]
    model = cfg["model"]
    assert {k: model[k] for k in want["model"]} == want["model"]
    assert model["mask_ratio"] == 0.75 and model["norm_pix_loss"] is True and model["weight_decay"] == 0.05
    assert model["crop_scale"] == [0.5, 1.0] and model["dihedral"] is True
    # the decoder follows the preset (4 x 256 for ViT-S, 8 x 512 for ViT-B): nothing overrides it
    assert model["decoder_dim"] is model["decoder_depth"] is model["decoder_heads"] is None
    assert cfg["data"]["batch_size"] == want["batch_size"] and cfg["seed_everything"] == 0
    trainer = cfg["trainer"]
    assert trainer["accelerator"] == want["accelerator"] and trainer["gradient_clip_val"] == 3.0
    assert trainer["use_distributed_sampler"] is False  # ShardSampler splits by rank
    assert trainer["precision"] == ("auto" if want["accelerator"] == "cpu" else "bf16-mixed")
    checkpoint = _callback(cfg, "ModelCheckpoint")
    assert checkpoint["every_n_train_steps"] == want["every"] and checkpoint["save_last"] is True
    # the run folder, named once, reaches both loggers and the checkpoint folder
    run = f"runs/{name}"
    assert trainer["default_root_dir"] == run
    assert [lg["init_args"]["save_dir"] for lg in trainer["logger"]] == [run, run]
    assert checkpoint["dirpath"] == f"{run}/checkpoints"
    assert [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]] == [
        "ModelCheckpoint", "LearningRateMonitor", "ReconstructionImages", "BackboneExport", "ProbeCallback"]
    assert _callback(cfg, "ProbeCallback")["root"] is None  # no path of this checkout: the probe is off


def test_one_option_turns_the_probe_on(capsys: pytest.CaptureFixture[str]) -> None:
    given = str(EUROSAT)
    cfg = _printed(capsys, BASE, PRETRAIN / "mae_tiny.yaml",
                   extra=("--trainer.callbacks.init_args.root", given))
    probe = _callback(cfg, "ProbeCallback")
    assert probe["root"] == given and probe["every_n_epochs"] == 2  # the rest of the shipped entry kept


@pytest.mark.slow
def test_shipped_config_fits_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A user's own store, cwd far from ../shared: the shipped base + mae_tiny run as they are."""
    work = tmp_path / "user"
    work.mkdir()
    tile_scenes([str(EUROSAT / "train" / "River")], work / "own.zarr",
                TileConfig(tile_size=64, band_order="eurosat"))
    monkeypatch.chdir(work)
    assert not Path("../shared").exists() and not Path("../../shared").exists()
    argv = ["fit", "--config", str(BASE), "--config", str(PRETRAIN / "mae_tiny.yaml"),
            "--data.stores", "[own.zarr]", "--data.num_workers", "0", "--data.batch_size", "8",
            "--model.preset", "vit_test", "--trainer.max_steps", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", "run"]
    with caplog.at_level("INFO", logger="rsmae.tasks.callbacks"):
        assert pretrain.main(argv) == 0
    run = work / "run" / "logs" / "version_0"
    assert (run / "backbone.safetensors").is_file() and not (run / "probe.json").exists()
    assert caplog.text.count("no EuroSAT probe: ProbeCallback has root: null") == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_run_folder_is_named_once(name: str) -> None:
    text = (PRETRAIN / f"{name}.yaml").read_text()
    uncommented = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert uncommented.count("runs/") == 1 and f"default_root_dir: runs/{name}\n" in uncommented
    base = BASE.read_text()
    assert base.count(f'save_dir: "{ROOT_KEY}"') == 2 and f'dirpath: "{ROOT_KEY}/checkpoints"' in base


def test_run_folder_on_the_command_line_moves_logs_and_checkpoints(capsys, tmp_path: Path) -> None:
    cfg = _printed(capsys, BASE, PRETRAIN / "rcmae_tiny.yaml",
                   extra=("--trainer.default_root_dir", str(tmp_path)))
    assert [lg["init_args"]["save_dir"] for lg in cfg["trainer"]["logger"]] == [str(tmp_path)] * 2
    assert _callback(cfg, "ModelCheckpoint")["dirpath"] == f"{tmp_path}/checkpoints"


def test_override_without_its_base_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    override = "configs/pretrain/mae_tiny.yaml"
    assert pretrain.main(["fit", "--config", str(ROOT / override), "--print_config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "base.yaml" in err and override in err
    with pytest.raises(SystemExit):  # base first, in the --config=... form too, is accepted
        pretrain.main(["fit", f"--config={BASE}", f"--config={PRETRAIN / 'mae_tiny.yaml'}", "--print_config"])


def test_test_helper_merges_as_the_cli(capsys, tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(shipped_config("rcmae_tiny")))
    assert _printed(capsys, merged) == _printed(capsys, BASE, PRETRAIN / "rcmae_tiny.yaml")


def _commands(path: Path) -> list[str]:
    """The command lines of a README, Makefile or script, backslash continuations joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


@pytest.mark.parametrize("doc", ["README.md", "Makefile", "pipelines/pretrain.py"])
def test_documented_commands_give_the_base_first(doc: str) -> None:
    overrides = [rf"--config\s+\S*configs/pretrain/{name}\.yaml" for name in EXPECTED]
    used = [line for line in _commands(ROOT / doc) if any(re.search(o, line) for o in overrides)]
    for line in used:
        assert re.search(r"--config\s+\S*configs/pretrain/base\.yaml\s+--config", line), line


@pytest.mark.slow
def test_one_seed_drives_model_and_data(capsys: pytest.CaptureFixture[str], eurosat_store: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from rsmae.tasks import AutoPrecisionTrainer

    base, tiny = PRETRAIN / "base.yaml", PRETRAIN / "mae_tiny.yaml"
    cfg = _printed(capsys, base, tiny, extra=("--seed_everything", "7"))
    assert cfg["seed_everything"] == 7 and "seed" not in cfg["model"] and "seed" not in cfg["data"]
    built = {}
    monkeypatch.setattr(AutoPrecisionTrainer, "fit", lambda self, model, datamodule=None, **kw: built.update(
        model=model, data=datamodule, weights_only=kw.get("weights_only")))
    assert pretrain.main(["fit", "--config", str(base), "--config", str(tiny), "--seed_everything", "7",
                          "--data.stores", f"[{eurosat_store}]",
                          "--trainer.default_root_dir", str(eurosat_store.parent / "run")]) == 0
    assert built["model"].hparams["seed"] == 7 and built["data"].hparams["seed"] == 7
    assert built["weights_only"] is True  # --ckpt_path loads tensors only
    with pytest.raises(SystemExit):
        pretrain.main(["fit", "--config", str(PRETRAIN / "base.yaml"), "--config",
                       str(PRETRAIN / "mae_tiny.yaml"), "--model.seed", "3", "--print_config"])
    assert 'must be given via "seed_everything"' in capsys.readouterr().err
