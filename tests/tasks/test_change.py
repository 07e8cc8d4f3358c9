"""Change detection: Siamese ViT, FC-Siam-diff, loss, sliding windows, metrics, ChangeTask, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAveragePrecision, BinaryPrecisionRecallCurve

from rsmae.bands import get_sensor
from rsmae.datasets import LEVIRCD, OSCD, PairCrops
from rsmae.errors import WeightsError
from rsmae.evaluation.change import evaluate_change
from rsmae.evaluation.change_metrics import BinnedPRCurve, best_f1_threshold, change_map, change_metrics
from rsmae.evaluation.sliding import blend_window, sliding_window_logits
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.models.change import FCSiamDiff, SiameseViT, change_loss, feature_indices
from rsmae.tasks.change import ChangeTask, augment_pair, load_change_model, save_change_model
from tests.conftest import DATA, load_script

evaluate_change_cli = load_script("pipelines/evaluate_change.py")

S2 = list(get_sensor("s2-l1c").names)
LEVIR = DATA / "levircd_samples"


def _backbone(path: Path, bands: list[str] = S2, sensor: str = "s2-l1c", img: int = 32,
              stats: bool = True) -> Path:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=len(bands), img_size=img, patch_size=8)
    mean, std = ([1000.0] * len(bands), [500.0] * len(bands)) if stats else (None, None)
    meta = BackboneMeta(preset="vit_test", img_size=img, patch_size=8, in_chans=len(bands), bands=bands,
                        sensor=sensor, mean=mean, std=std, gsd=10.0)
    return save_backbone(enc, path, meta)


@pytest.fixture(scope="module")
def oscd_crop() -> OSCD:
    return OSCD(DATA / "oscd_subset", cities=["mumbai"], window=(400, 200, 64, 96))


def _batch(data: OSCD, size: int = 32, n: int = 4, seed: int = 0) -> dict:
    loader = DataLoader(PairCrops(data.scenes, size, n, seed=seed), batch_size=n)
    return next(iter(loader))


def test_siamese_encoder_is_one_parameter_set_and_both_dates_feed_its_gradient(oscd_crop: OSCD) -> None:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    model = SiameseViT(enc, fusion="concat")
    assert feature_indices(12) == [2, 5, 8, 11] and model.indices == [0, 1]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in enc.parameters()) + sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("encoder."))
    pair = (_batch(oscd_crop)["image"] - 1000) / 500
    feats = model.features(pair)  # concat: channels [date 1, date 2]
    alone = [enc.forward_intermediates(pair[:, t], indices=[0, 1], intermediates_only=True) for t in (0, 1)]
    for f, f1, f2 in zip(feats, *alone, strict=True):
        torch.testing.assert_close(f, torch.cat([f1, f2], 1), rtol=1e-4, atol=1e-5)
    # the gradient of the shared weights is the sum of what each date contributes
    sum(f.sum() for f in model.features(pair)).backward()
    both = enc.patch_embed.proj.weight.grad.clone()
    enc.zero_grad()
    for t in (0, 1):
        sum(f.sum() for f in enc.forward_intermediates(pair[:, t], indices=[0, 1], intermediates_only=True)
            ).backward()
    torch.testing.assert_close(both, enc.patch_embed.proj.weight.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fusion", ["diff", "concat"])
def test_both_fusions_predict_full_resolution_and_train(fusion: str, oscd_crop: OSCD) -> None:
    torch.manual_seed(0)
    model = SiameseViT(create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8), fusion=fusion)
    batch = _batch(oscd_crop)
    pair = (batch["image"] - 1000) / 500
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        logits = model(pair)
        assert logits.shape == (4, 32, 32)
        loss = change_loss(logits, batch["mask"], pos_weight=5.0, dice_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    fc = FCSiamDiff(13)
    assert fc(pair[:, :, :, :30, :27]).shape == (4, 30, 27)  # padded inside to a multiple of 16


def test_augmentation_is_identical_on_both_dates_and_the_mask(oscd_crop: OSCD) -> None:
    image = _batch(oscd_crop, n=8)["image"]
    image[:, 1] = image[:, 0]  # date 2 := date 1, so any difference would be a different transform
    mask = (image[:, 0, 3] > image[:, 0, 3].median()).long()
    out = augment_pair({"image": image, "mask": mask, "city": "x"}, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["image"][:, 0], out["image"][:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out["mask"], (out["image"][:, 0, 3] > image[:, 0, 3].median()).long())
    changed = [not torch.equal(out["image"][i], image[i]) for i in range(8)]
    assert any(changed) and out["city"] == "x"


def test_sliding_windows_equal_one_forward_when_the_scene_fits_and_blend_without_seams(oscd_crop: OSCD
                                                                                       ) -> None:
    torch.manual_seed(0)
    model = SiameseViT(create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)).eval()
    scene = (oscd_crop[0]["image"] - 1000) / 500  # (2, 13, 64, 96)
    window = scene[..., 10:42, 20:52]
    with torch.no_grad():
        single = model(window[None])[0]
    torch.testing.assert_close(sliding_window_logits(model, window, window=32, overlap=8), single)
    # non-overlapping flat windows tile the scene: each pixel is its own window's logit
    tiled = sliding_window_logits(model, scene, window=32, overlap=0, blend="flat", batch_size=5)
    with torch.no_grad():
        torch.testing.assert_close(tiled[32:64, 64:96], model(scene[None, ..., 32:64, 64:96])[0])
    blended = sliding_window_logits(model, scene, window=32, overlap=16, batch_size=3)
    assert blended.shape == (64, 96) and torch.isfinite(blended).all()
    small = sliding_window_logits(model, scene[..., :20, :25], window=32, overlap=8)
    assert small.shape == (20, 25)  # padded to one window, cropped back
    w = blend_window(32)
    assert float(w.min()) > 0 and float(w[15:17, 15:17].mean()) > 0.99


def test_metrics_match_hand_counts_and_ignore_unlabelled_pixels() -> None:
    probs = torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.6, 0.3, 0.7, 0.4], [0.95, 0.05, 0.55, 0.45]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 255], [255, 0, 0, 1]])
    # at 0.5 over the 10 labelled pixels: TP 3 (0.9, 0.8, 0.7), FN 2 (0.2, 0.45), FP 2 (0.6, 0.55), TN 3
    m = change_metrics(probs, mask, threshold=0.5)
    expected = {"precision": 3 / 5, "recall": 3 / 5, "f1": 3 / 5, "iou": 3 / 7, "accuracy": 6 / 10}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key
    flipped = probs.clone()
    flipped[mask == 255] = 1 - flipped[mask == 255]  # predictions on ignored pixels do not count
    assert change_metrics(flipped, mask, threshold=0.5) == pytest.approx(m)
    logits = torch.logit(probs).requires_grad_(True)
    change_loss(logits, mask, pos_weight=4.0, dice_weight=1.0).backward()
    assert bool((logits.grad[mask == 255] == 0).all()) and bool((logits.grad[mask != 255] != 0).all())
    assert float(change_loss(logits, torch.full_like(mask, 255)).detach()) == 0.0
    # best threshold: in (0.1, 0.2] -> every change pixel found (TP 5), FP 3 (0.3, 0.55, 0.6): F1 10/13
    threshold, f1 = best_f1_threshold([probs], [mask], bins=101)
    assert 0.1 < threshold <= 0.2 and f1 == pytest.approx(10 / 13)
    # the histogram curve is torchmetrics' binned curve and average precision, on a real-size map
    gen = torch.Generator().manual_seed(0)
    big_mask = (torch.rand(200, 200, generator=gen) < 0.05).long()
    big_mask[:10] = 255
    big = (0.3 * big_mask.clamp(max=1) + 0.8 * torch.rand(200, 200, generator=gen)).clamp(0, 1)
    ours = BinnedPRCurve(bins=51)
    ours.update(big, big_mask)
    reference = BinaryPrecisionRecallCurve(thresholds=51, ignore_index=255)
    for a, b in zip(ours.compute(), reference(big.flatten(), big_mask.flatten()), strict=True):
        torch.testing.assert_close(a.double(), b.double(), equal_nan=True)
    expected_ap = BinaryAveragePrecision(thresholds=51, ignore_index=255)(big.flatten(), big_mask.flatten())
    assert ours.average_precision() == pytest.approx(float(expected_ap), abs=1e-6)
    strip = change_map(torch.rand(2, 3, 3, 4), ["R", "G", "B"], "rgb", mask, probs > 0.5)
    assert strip.shape == (3, 5 * 4 + 4 * 4, 3)
    errors = strip[:, 4 * (4 + 4):]  # the fifth panel: TP green, FP red, FN blue, ignored grey
    assert tuple(errors[0, 0]) == (0, 200, 0) and tuple(errors[1, 0]) == (230, 0, 0)
    assert tuple(errors[0, 2]) == (30, 90, 255) and tuple(errors[1, 3]) == (110, 110, 110)


def _fit(task: ChangeTask, data: OSCD, steps: int = 2) -> None:
    loader = DataLoader(PairCrops(data.scenes, 32, 4 * steps), batch_size=4)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, loader)


@pytest.mark.parametrize("tune", ["frozen", pytest.param(1, marks=pytest.mark.slow)])
def test_frozen_means_frozen(tune: str | int, tmp_path: Path, oscd_crop: OSCD) -> None:
    task = ChangeTask(bands=S2, backbone=str(_backbone(tmp_path / "b.safetensors")), img_size=32, tune=tune,
                      sensor="s2-l1c", warmup_steps=0)
    assert task.hparams.mean == [1000.0] * 13  # the backbone's statistics
    enc = task.encoder
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    _fit(task, oscd_crop)
    moved = {n for n, p in task.model.named_parameters() if not torch.equal(p, before[n])}
    frozen = [n for n, p in enc.named_parameters(prefix="encoder") if not p.requires_grad]
    assert frozen and not (moved & set(frozen))
    assert all(p.grad is None for n, p in enc.named_parameters() if not p.requires_grad)
    assert any(n.startswith("lateral") for n in moved)  # the decoder trained
    if tune == 1:
        assert any(n.startswith("encoder.blocks.1.") for n in moved)
        assert not any(n.startswith("encoder.blocks.0.") for n in moved)
    task.train()
    assert not enc.patch_embed.training and not enc.blocks[0].training
    assert task.model.lateral.training


def test_a_saved_model_reloads_without_its_backbone_and_predicts_the_same(tmp_path: Path,
                                                                           oscd_crop: OSCD) -> None:
    backbone = _backbone(tmp_path / "b.safetensors", stats=False)
    task = ChangeTask(bands=S2, backbone=str(backbone), img_size=32, tune="full", sensor="s2-l1c")
    assert task.hparams.mean is None
    task.set_statistics([1200.0] * 13, [400.0] * 13)
    _fit(task, oscd_crop, steps=1)
    path = save_change_model(task, tmp_path / "model.safetensors", extra={"threshold": 0.3})
    backbone.unlink()
    again, extra = load_change_model(path)
    assert extra == {"threshold": 0.3} and again.hparams.mean == [1200.0] * 13
    pair = _batch(oscd_crop)["image"]
    task.eval()
    torch.testing.assert_close(again.predict_logits(pair), task.predict_logits(pair))
    with pytest.raises(WeightsError, match="no such change model"):
        load_change_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no mean/std"):
        ChangeTask(bands=S2, img_size=32, preset="vit_test", patch_size=8).normalize(pair)


@pytest.mark.slow
def test_evaluate_change_trains_scores_whole_scenes_and_the_pipeline_reloads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backbone = _backbone(tmp_path / "rgb.safetensors", bands=["R", "G", "B"], sensor="rgb")
    lines: list[dict] = []
    kw = {"test_root": LEVIR, "dataset": "levircd", "test_cities": ["test_2_0000_0000", "test_55_0256_0000"],
          "crop_size": 32, "overlap": 8, "steps": 3, "batch_size": 4}
    result = evaluate_change(str(backbone), "last1", out_dir=tmp_path / "run", on_scene=lines.append, **kw)
    assert [line["scene"] for line in lines] == ["test_2_0000_0000", "test_55_0256_0000"]
    for key in ("f1", "iou", "precision", "recall", "accuracy", "threshold", "val_f1", "average_precision"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["train_scenes"] == ["train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768"]
    assert (tmp_path / "run" / "maps" / "test_2_0000_0000.png").is_file()
    assert (tmp_path / "run" / "pr_curve.png").is_file() and (tmp_path / "run" / "pr_curve.csv").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["f1"] == result["f1"]
    # the pipeline scores the saved model without retraining: a line per scene, then the JSON
    code = evaluate_change_cli.main(["--task", "levircd", "--load", result["model_path"], "--test-root",
                                     str(LEVIR), "--test-cities", ",".join(kw["test_cities"]),
                                     "--set", "crop_size=32", "--set", "overlap=8"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[0].startswith("test_2_0000_0000: f1 ") and len(out) == 3
    again = json.loads(out[-1])
    for key in ("f1", "iou", "precision", "recall", "threshold"):
        assert again[key] == pytest.approx(result[key], abs=1e-6)
    assert evaluate_change_cli.main(["--task", "oscd", "--test-root", str(tmp_path / "none")]) == 2
    assert evaluate_change_cli.main(["--task", "levircd", "--test-root", str(LEVIR), "--set", "stpes=3"]) == 2
    err = capsys.readouterr().err
    assert "error: OSCD not found at" in err and "unknown change-detection setting(s) ['stpes']" in err


@pytest.mark.slow
def test_fc_siam_diff_baseline_runs_end_to_end(tmp_path: Path) -> None:
    result = evaluate_change(None, model="fc-siam-diff", test_root=LEVIR, dataset="levircd",
                             test_cities=["test_7_0256_0512"], crop_size=32, overlap=8, steps=2, batch_size=2,
                             out_dir=tmp_path)
    assert result["model"] == "fc-siam-diff" and 0.0 <= result["f1"] <= 1.0
    assert LEVIRCD(LEVIR, "val").change_fraction() > 0


@pytest.mark.slow
def test_bench_change_runs_and_writes_its_table(tmp_path: Path) -> None:
    bench_change = load_script("benchmarks/bench_change.py")

    args = ["--size", "96", "--preset", "vit_test", "--steps", "1", "--repeats", "1", "--precisions", "fp32",
            "--window", "32", "--overlap", "0", "--train-batch", "2", "--out", str(tmp_path)]
    assert bench_change.main(args) == 0
    table = (tmp_path / "change_speed.md").read_text()
    assert "\n- commit: " in table and "\n- machine: " in table
    assert "| training step | fp32 | fc-siam-diff |" in table
    assert "| inference, whole city | fp32 | siamese-vit | 1 window(s)/batch |" in table
    assert len((tmp_path / "change_speed.csv").read_text().splitlines()) == 1 + 4 + 4


def test_a_change_model_on_a_spectral_backbone_reloads_from_its_file(tmp_path: Path) -> None:
    """The saved encoder metadata rebuilds the spectral patch embedding (on the task's bands)."""
    s2 = ["B02", "B03", "B04", "B08"]
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=4, img_size=32, patch_size=8, patch_embed="spectral", bands=s2,
                         sensor="s2-l1c")
    backbone = save_backbone(enc, tmp_path / "b.safetensors", BackboneMeta(
        preset="vit_test", img_size=32, patch_size=8, in_chans=4, bands=s2, sensor="s2-l1c", mean=None,
        std=None, gsd=10.0))
    tm = ["B1", "B2", "B3", "B4", "B5", "B7"]  # another sensor's bands, by wavelength
    task = ChangeTask(bands=tm, backbone=str(backbone), sensor="landsat-tm", img_size=32, tune="frozen",
                      mean=[0.0] * 6, std=[1.0] * 6).eval()
    with torch.no_grad():
        task.model.head.bias.fill_(0.3)  # a trained weight that the reload must carry
    path = save_change_model(task, tmp_path / "m.safetensors", extra={"threshold": 0.4})
    backbone.unlink()  # the model file alone rebuilds it
    again, extra = load_change_model(path)
    pair = torch.rand(2, 2, 6, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again.predict_logits(pair), task.predict_logits(pair), rtol=1e-5,
                                   atol=1e-6)
    assert extra == {"threshold": 0.4}
