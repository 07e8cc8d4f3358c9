"""benchmarks/any_sensor.py: tile counts, the paired rows of every evaluation, the table and the CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.conftest import load_script

anysensor = load_script("benchmarks/any_sensor.py")
anysensor_change = load_script("benchmarks/any_sensor_change.py")


def test_tile_counts_cover_the_labelled_pixels_of_the_scene_once() -> None:
    gen = np.random.default_rng(0)
    mask = gen.choice([0, 1, 255], size=(70, 50), p=[0.6, 0.1, 0.3])
    changed = gen.random((70, 50)) > 0.7
    tiles = anysensor_change.tile_counts(changed, mask, 32, 255)
    assert tiles.shape == (3 * 2, 3)  # partial tiles at the right and bottom edges count too
    labelled = mask != 255
    whole = [(changed & (mask == 1)).sum(), (changed & (mask == 0)).sum(), (~changed & (mask == 1)).sum()]
    assert tiles.sum(axis=0).tolist() == [int(v) for v in whole]
    assert tiles.sum() == labelled.sum() - (~changed & (mask == 0)).sum()


def test_change_rows_score_the_seed_mean_of_pooled_f1_and_pair_the_draws() -> None:
    gen = np.random.default_rng(1)
    per_sensor = gen.integers(0, 20, size=(3, 12, 3))
    counts = {"s2": per_sensor.copy(), "landsat": per_sensor.copy(), "mixed": per_sensor.copy()}
    counts["mixed"][..., 0] += 30  # more true positives: a clearly higher F1 on every tile and seed
    counts["s2"][..., 1] += 15  # more false positives: lower than the unchanged Landsat backbone
    rows = {r.backbone: r for r in anysensor.change_rows("cd", counts, resamples=2000)}
    tp, fp, fn = per_sensor.sum(axis=1).T
    assert np.isclose(rows["landsat"].score, np.mean(2 * tp / (2 * tp + fp + fn)))
    assert rows["landsat"].low <= rows["landsat"].score <= rows["landsat"].high
    assert rows["mixed"].diff is None and rows["landsat"].sensor == "landsat"
    assert rows["landsat"].diff.low > 0 and rows["s2"].diff.low > rows["landsat"].diff.low
    same = anysensor.change_rows("cd", {"landsat": per_sensor, "mixed": per_sensor}, resamples=500)
    assert same[0].diff.difference == 0 and same[0].diff.low == 0 == same[0].diff.high


def test_table_marks_the_per_sensor_backbone_and_says_no_clear_difference(tmp_path: Path) -> None:
    gen = np.random.default_rng(2)
    base = (gen.random(60) > 0.4).astype(float)
    better = base.copy()
    better[base == 0] = 1.0
    rows = anysensor.eurosat_rows("EuroSAT, all 13 bands", {"s2": base, "landsat": base * 0,
                                                             "mixed": base})
    rows += anysensor.eurosat_rows("EuroSAT, subset", {"s2": base, "landsat": base, "mixed": better})
    lines, sentences = anysensor.table(rows)
    assert len(lines) == 2 + 6
    assert "S2 only (per-sensor)" in lines[2] and "(per-sensor)" not in lines[3]
    assert sentences[0].startswith("- EuroSAT, all 13 bands, against the per-sensor backbone: No clear diff")
    assert "is higher than S2 only" in sentences[2] and "over 60 images" in sentences[2]
    anysensor.write_csv(tmp_path / "t.csv", rows, {"s2": "a.safetensors"},
                        {"commit": "abc", "command": "x", "machine": "m", "date": "d"})
    with (tmp_path / "t.csv").open() as fh:
        lines_csv = list(csv.DictReader(fh))
    assert [r["per_sensor"] for r in lines_csv] == ["1", "0", "0", "1", "0", "0"]
    assert lines_csv[0]["backbone_file"] == "a.safetensors" and lines_csv[0]["commit"] == "abc"
    assert float(lines_csv[3]["mixed_minus_this"]) == round(float(better.mean() - base.mean()), 4)
    assert lines_csv[2]["verdict"] == "" and lines_csv[3]["verdict"].startswith("mixed S2 + Landsat")


def test_levir_rows_pair_the_mixed_backbone_with_the_natural_mae_as_rgb_per_sensor(tmp_path: Path) -> None:
    gen = np.random.default_rng(3)
    base = gen.integers(0, 20, size=(3, 14, 3))
    counts = {"s2": base, "landsat": base, "natural": base.copy(), "mixed": base}
    counts["natural"][..., 2] += 40  # misses every change: clearly below the mixed backbone
    rows = anysensor.change_rows("LEVIR", counts, sensor="rgb", resamples=1000)
    assert [r.backbone for r in rows] == ["s2", "landsat", "natural", "mixed"]
    assert [r.per_sensor for r in rows] == [False, False, True, False]
    lines, sentences = anysensor.table(rows)
    assert "natural-image MAE (Tiny-ImageNet) (per-sensor)" in lines[4] and "(per-sensor)" not in lines[2]
    assert sentences[0].startswith("- LEVIR, against another sensor's backbone: No clear difference")
    assert sentences[2].startswith("- LEVIR, against the per-sensor backbone: mixed S2 + Landsat (1:1) is "
                                   "higher than natural-image MAE")
    assert "14 test tiles x 3 seeds" in sentences[2]
    anysensor.write_csv(tmp_path / "t.csv", rows, {}, {"commit": "abc"})
    with (tmp_path / "t.csv").open() as fh:
        assert [(r["data_sensor"], r["per_sensor"]) for r in csv.DictReader(fh)] == [
            ("rgb", "0"), ("rgb", "0"), ("rgb", "1"), ("rgb", "0")]


def test_the_natural_mae_is_loaded_only_for_levir() -> None:
    args = anysensor.parse_args([])
    files = anysensor.backbone_files(args)
    assert list(files) == ["s2", "landsat", "natural", "mixed", "mixed4"]
    evaluations = anysensor.change_evaluations(args, files)
    assert [(e[0], e[1], e[2], list(e[4])) for e in evaluations] == [
        (anysensor.CHANGE, "landsat", "landsat", ["s2", "landsat", "mixed", "mixed4"]),
        (anysensor.LEVIR, "levircd", "rgb", ["s2", "landsat", "natural", "mixed", "mixed4"])]
    assert files["mixed4"].parts[-3:] == ("anysensor", "mixed4_1x", "backbone.safetensors")
    assert evaluations[1][4]["natural"].parts[-3:] == ("budget", "natural_1x", "backbone.safetensors")
    for flags in (["--skip-levir"], ["--skip-change"]):
        args = anysensor.parse_args(flags)
        files = anysensor.backbone_files(args)
        assert "natural" not in files
        assert [e[0] for e in anysensor.change_evaluations(args, files)] == (
            [anysensor.CHANGE] if flags == ["--skip-levir"] else [])


def test_the_4_store_backbone_is_paired_with_the_per_sensor_and_the_2_store_mixed(tmp_path: Path) -> None:
    gen = np.random.default_rng(4)
    base = (gen.random(80) > 0.5).astype(float)
    better = base.copy()
    better[base == 0] = 1.0
    three = {"s2": base, "landsat": 1 - base, "mixed": base}
    before = anysensor.eurosat_rows("EuroSAT", three)
    rows = anysensor.eurosat_rows("EuroSAT", {**three, "mixed4": better})
    assert [r.diff for r in rows[:3]] == [r.diff for r in before]  # the 2-store column is unchanged
    assert rows[3].backbone == "mixed4" and rows[3].diff is None is rows[3].diff4
    assert rows[1].diff4 is None and rows[0].diff4.low > 0  # against S2 only (per-sensor), not Landsat
    assert rows[2].diff4 == rows[0].diff4  # mixed scores as S2 only here
    assert np.isclose(rows[0].diff4.difference, better.mean() - base.mean())
    counts = gen.integers(0, 20, size=(3, 10, 3))
    plus = {"s2": counts, "landsat": counts, "natural": counts, "mixed": counts, "mixed4": counts.copy()}
    plus["mixed4"][..., 0] += 30
    change = anysensor.change_rows("LEVIR", plus, sensor="rgb", resamples=1000)
    old = anysensor.change_rows("LEVIR", {r: plus[r] for r in list(plus)[:4]}, sensor="rgb", resamples=1000)
    assert [(r.low, r.high, r.diff) for r in change[:4]] == [(r.low, r.high, r.diff) for r in old]
    assert [r.backbone for r in change if r.diff4 is not None] == ["natural", "mixed"]
    assert all(r.diff4.low > 0 for r in change if r.diff4 is not None)
    lines, sentences = anysensor.table(rows + change)
    assert lines[0].count("|") == 6 and all(line.count("|") == 6 for line in lines)
    assert lines[5].endswith("|  |  |") and "(per-sensor)" in lines[2]  # the mixed4 row: no pair
    said4 = [s for s in sentences if "4-store mixed against" in s]
    assert [s.split(": ")[0] for s in said4] == [
        "- EuroSAT, 4-store mixed against the per-sensor backbone",
        "- EuroSAT, 4-store mixed against the 2-store mixed backbone",
        "- LEVIR, 4-store mixed against the per-sensor backbone",
        "- LEVIR, 4-store mixed against the 2-store mixed backbone"]
    assert said4[2].split(": ")[1].startswith("mixed S2 + OLI + TM + RGB (1:1:1:1) is higher than natural")
    anysensor.write_csv(tmp_path / "t.csv", rows, {"mixed4": "m4.safetensors"}, {"commit": "abc"})
    with (tmp_path / "t.csv").open() as fh:
        got = list(csv.DictReader(fh))
    assert [r["mixed4_minus_this"] != "" for r in got] == [True, False, True, False]
    assert [r["mixed_minus_this"] != "" for r in got] == [True, True, False, False]
    assert got[3]["backbone_file"] == "m4.safetensors" and got[3]["verdict4"] == ""
    assert got[2]["verdict4"].startswith("mixed S2 + OLI + TM + RGB (1:1:1:1) is higher than mixed S2 + L")
    assert float(got[0]["mixed4_minus_this"]) == round(float(better.mean() - base.mean()), 4)
