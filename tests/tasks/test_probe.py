"""Frozen-feature probes: the EuroSAT probe callback, the EuroSAT reader, kNN and linear accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsmae.bands import SENSORS, Band, Sensor
from rsmae.datasets import EuroSAT
from rsmae.errors import BandError, InputNotFoundError
from rsmae.tasks import PretrainTask, ProbeCallback, knn_accuracy, linear_probe_accuracy
from tests.conftest import EUROSAT


def test_probe_on_real_eurosat(eurosat_store: Path, tile_datamodule) -> None:
    dm = tile_datamodule(eurosat_store)
    info = dm.data_info
    probe = ProbeCallback(root=str(EUROSAT), linear_steps=100)
    probe.load(info)
    assert probe.data["train"].bands == tuple(info["bands"]) and len(probe.data["test"]) == 54
    torch.manual_seed(0)
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13)
    metrics = probe.evaluate(task.encoder(), img_size=64)
    assert set(metrics) == {"probe/knn_acc", "probe/linear_acc"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["probe/knn_acc"] > 0.2 and metrics["probe/linear_acc"] > 0.2  # chance is 0.1
    with pytest.raises(BandError, match="not all EuroSAT bands"):
        EuroSAT(EUROSAT, "test", bands=["B04", "B03", "R"])


@pytest.mark.parametrize(("sensor", "bands", "expected", "evaluate"), [
    ("rgb", ["R", "G", "B"], ["B04", "B03", "B02"], True),
    ("landsat-oli", ["B2", "B3", "B4"], ["B02", "B03", "B04"], True),  # the demo's Landsat store
    ("landsat-oli", ["B4", "B5", "B6", "B7"], ["B04", "B8A", "B11", "B12"], False),  # by wavelength
])
def test_probe_rgb_and_landsat_encoders_on_matching_eurosat_bands(
        sensor: str, bands: list[str], expected: list[str], evaluate: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    # statistics of another product (8-bit RGB, Landsat DN): not used for EuroSAT
    info = {"sensor": sensor, "bands": bands, "mean": [90.0] * len(bands), "std": [40.0] * len(bands)}
    probe = ProbeCallback(root=str(EUROSAT), linear_steps=50)
    with caplog.at_level("WARNING", logger="rsmae.tasks.callbacks"):
        probe.load(info)
    assert caplog.text.count("probing a") == 1 and f"{bands[0]} <- {expected[0]}" in caplog.text
    train, test = (EuroSAT(EUROSAT, s, bands=expected).images.double() for s in ("train", "test"))
    mean, std = train.mean((0, 2, 3))[:, None, None], train.std((0, 2, 3))[:, None, None]
    torch.testing.assert_close(probe.images["train"], ((train - mean) / std).float())  # EuroSAT train stats
    torch.testing.assert_close(probe.images["test"], ((test - mean) / std).float())
    if not evaluate:
        return
    torch.manual_seed(0)
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=len(bands))
    metrics = probe.evaluate(task.encoder(), img_size=64)
    assert metrics["probe/knn_acc"] > 0.2 and metrics["probe/linear_acc"] > 0.2  # chance is 0.1


def test_probe_refuses_a_sensor_without_any_matching_band(monkeypatch: pytest.MonkeyPatch) -> None:
    thermal = (Band("B10", 10895.0, 100), Band("B11", 12005.0, 100))
    monkeypatch.setitem(SENSORS, "tirs", Sensor("tirs", "Landsat TIRS", thermal, ("-", "-", "-")))
    with pytest.raises(BandError, match="no s2-l1c band matches the tirs bands B10, B11"):
        ProbeCallback(root=str(EUROSAT)).load({"sensor": "tirs", "bands": ["B10", "B11"]})
    # one matching band is enough: the thermal channel is fed zeros (its mean)
    mixed = (Band("R", 660.0, 30), *thermal)
    monkeypatch.setitem(SENSORS, "mixed", Sensor("mixed", "red + thermal", mixed, ("-", "-", "-")))
    probe = ProbeCallback(root=str(EUROSAT))
    probe.load({"sensor": "mixed", "bands": ["R", "B10"]})
    assert probe.images["test"].shape[1] == 2 and not probe.images["test"][:, 1].any()
    assert probe.images["test"][:, 0].std() > 0.5


def test_eurosat_reads_bands_by_name_and_refuses_a_missing_root(tmp_path: Path) -> None:
    import rasterio
    rgb = EuroSAT(EUROSAT, "test", bands=["red", "B3", "B02"])
    with rasterio.open(rgb.paths[0]) as src:
        raw = torch.from_numpy(src.read().astype("float32"))
    torch.testing.assert_close(rgb[0]["image"], raw[[3, 2, 1]])  # file order: B01..B12, B8A
    assert rgb[0]["label"] == rgb.classes.index(rgb.paths[0].parent.name) and len(rgb.classes) == 10
    with pytest.raises(InputNotFoundError, match=str(tmp_path / "nowhere")) as err:
        EuroSAT(tmp_path / "nowhere", "train")
    assert "pass root=" in str(err.value) and isinstance(err.value, FileNotFoundError)


def test_knn_and_linear_probe_score_separable_and_random_features() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 16, generator=gen) * 5
    feats = centres[labels] + torch.randn(200, 16, generator=gen)
    train, test = slice(0, 150), slice(150, 200)
    assert knn_accuracy(feats[train], labels[train], feats[test], labels[test], k=5) == 1.0
    assert linear_probe_accuracy(feats[train], labels[train], feats[test], labels[test]) == 1.0
    noise = torch.randn(200, 16, generator=gen)
    assert knn_accuracy(noise[train], labels[train], noise[test], labels[test], k=5) < 0.6



def test_one_head_fitter_single_label_multi_label_and_mlp() -> None:
    """fit_head serves the probe, classification (linear / mlp) and multi-label (multi-hot targets)."""
    from rsmae.evaluation.multilabel import fit_multilabel_probe
    from rsmae.tasks.probe import fit_head, fit_linear_probe

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    feats = torch.randn(4, 16, generator=gen)[labels] * 5 + torch.randn(200, 16, generator=gen)
    linear = fit_head(feats, labels, lr=1e-2)
    assert torch.equal(linear(feats), fit_linear_probe(feats, labels)(feats))  # deterministic, no RNG
    assert float((linear(feats).argmax(1) == labels).float().mean()) == 1.0
    mlp = fit_head(feats, labels, head="mlp", lr=1e-2, num_classes=4, seed=3)
    assert not mlp.training and float((mlp(feats).argmax(1) == labels).float().mean()) == 1.0
    assert torch.equal(mlp(feats), fit_head(feats, labels, head="mlp", lr=1e-2, num_classes=4, seed=3)(feats))
    multi_hot = torch.nn.functional.one_hot(labels, 4) | (labels[:, None] == 0).long()  # class 0 -> all
    scores = fit_head(feats, multi_hot, lr=3e-2)(feats)
    assert scores.shape == (200, 4) and bool(((scores > 0).long() == multi_hot).all())
    with pytest.deprecated_call():
        assert torch.equal(fit_multilabel_probe(feats, multi_hot, 3e-2)(feats), scores)
    with pytest.raises(ValueError, match="choose 'linear' or 'mlp'"):
        fit_head(feats, labels, head="svm")


def test_lr_sweep_keeps_the_first_best() -> None:
    from rsmae.tasks.probe import LR_SWEEP, sweep_lr

    fitted: list[float] = []

    def fit(lr: float) -> torch.nn.Module:
        fitted.append(lr)
        return torch.nn.Linear(1, 1)

    scores = iter([0.2, 0.5, 0.5, 0.1])
    model, lr, score = sweep_lr(fit, lambda _: next(scores))
    assert fitted == list(LR_SWEEP) and (lr, score) == (LR_SWEEP[1], 0.5)
    assert isinstance(model, torch.nn.Linear)


def _torchgeo_layout(root: Path) -> Path:
    """torchgeo's EuroSAT download of the real subset: class folders in ds/, split files of .jpg names."""
    from rsmae.datasets.eurosat import TORCHGEO_DIR

    for path in sorted(EUROSAT.glob("*/*/*.tif")):
        (root / TORCHGEO_DIR / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / TORCHGEO_DIR / path.parent.name / path.name).symlink_to(path)
    for split in ("train", "test"):
        names = sorted((p.with_suffix(".jpg").name for p in (EUROSAT / split).glob("*/*.tif")), reverse=True)
        (root / f"eurosat-{split}.txt").write_text("\n".join(names) + "\n")
    first = [sorted(d.glob("*.tif"))[0].with_suffix(".jpg").name for d in (EUROSAT / "test").iterdir()]
    (root / "eurosat-val.txt").write_text("\n".join(first) + "\n")
    return root


@pytest.mark.slow
def test_eurosat_and_the_probe_read_torchgeos_layout(tmp_path: Path, eurosat_store: Path,
                                                     tile_datamodule) -> None:
    root = _torchgeo_layout(tmp_path / "torchgeo")
    for split in ("train", "test"):
        ours, theirs = (EuroSAT(r, split, bands=["B04", "B8A"]) for r in (EUROSAT, root))
        assert theirs.torchgeo and not ours.torchgeo and theirs.classes == ours.classes
        assert [p.name for p in theirs.paths] == [p.name for p in ours.paths]
        assert torch.equal(theirs.images, ours.images) and torch.equal(theirs.labels, ours.labels)
    assert len(EuroSAT(root, "val")) == 10  # one test image per class
    info = tile_datamodule(eurosat_store).data_info
    ours, theirs = ProbeCallback(root=str(EUROSAT)), ProbeCallback(root=str(root))
    ours.load(info)
    theirs.load(info)
    assert all(torch.equal(theirs.images[s], ours.images[s]) for s in ("train", "test"))
    (root / "eurosat-test.txt").write_text("Forest_99999.jpg\n")
    with pytest.raises(InputNotFoundError, match="eurosat-test.txt: 1 of its 1 files are not in .*_99999"):
        EuroSAT(root, "test")
    with pytest.raises(InputNotFoundError, match="val split not found"):
        EuroSAT(EUROSAT, "val")  # the class-folder layout has no val/
