"""Annotated change maps: panel titles, a key of the error colours and a caption below the strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsmae.evaluation.render import (
    ERROR_COLOURS,
    PANEL_TITLES,
    annotate_change_map,
    change_map,
    change_map_figure,
    save_change_map,
)
from rsmae.experiments import GridConfig, cell_path
from tests.conftest import load_script

CAPTION = "oscd-pisa pisa: init rs_mae, protocol frozen, seed 0 — the seed-0 cell with the highest F1"


def _strip(h: int = 40, w: int = 60) -> np.ndarray:
    """A strip whose error panel has every case: TP, FP, FN and unlabelled pixels."""
    gen = torch.Generator().manual_seed(0)
    truth = (torch.rand(h, w, generator=gen) < 0.3).long()
    truth[:5] = 255
    pred = torch.rand(h, w, generator=gen) < 0.3
    return change_map(torch.rand(2, 3, h, w, generator=gen), ["R", "G", "B"], "rgb", truth, pred)


def test_the_figure_has_panel_titles_a_key_and_the_caption() -> None:
    fig = change_map_figure(_strip(), CAPTION)
    assert [ax.get_title() for ax in fig.axes] == list(PANEL_TITLES)
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in fig.axes)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert [label.split(":")[0] for label in labels[:3]] == ["TP", "FP", "FN"]
    assert any(label.startswith("unlabelled") for label in labels)
    colours = [tuple(round(255 * c) for c in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert {ERROR_COLOURS[k] for k in ("tp", "fp", "fn", "ignored")} <= set(colours)
    assert [" ".join(t.get_text().split()) for t in fig.texts] == [CAPTION]  # wrapped to the width


def test_the_png_has_the_key_colours_below_the_panels_and_can_replace_its_strip(tmp_path: Path) -> None:
    strip = save_change_map(tmp_path / "pisa.png", torch.rand(2, 3, 40, 60), ["R", "G", "B"], "rgb",
                            torch.ones(40, 60, dtype=torch.long), torch.ones(40, 60, dtype=torch.bool))
    out = annotate_change_map(strip, strip, CAPTION)  # in place, as the committed maps were redone
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[0] > 40 + 60 and png.shape[1] >= 5 * 60 + 4 * 4
    # an all-TP map: FP, FN and unlabelled colours come from the key; TP also shows below the error panel
    colour = {name: (png == ERROR_COLOURS[name]).all(axis=-1) for name in ("tp", "fp", "fn", "ignored")}
    assert all(colour[name].any() for name in ("fp", "fn", "ignored"))
    green = colour["tp"].sum(axis=1)
    panel_rows = np.flatnonzero(green > green.max() // 2)  # rows of the all-green error panel
    assert len(panel_rows) >= 40 and colour["tp"][panel_rows[-1] + 1:].any()
    with pytest.raises(ValueError, match="5 panels"):  # an annotated map is no strip any more
        annotate_change_map(out, tmp_path / "again.png", CAPTION)


@pytest.mark.parametrize("shape", [(40, 5 * 60 + 4 * 4 + 1, 3), (40, 16, 3), (40, 316)])
def test_a_strip_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"5 panels of width W and 4 white gaps of 4 px \(5W \+ 16 px"):
        change_map_figure(np.zeros(shape, dtype=np.uint8), CAPTION)


def test_a_strip_with_another_gap_is_refused() -> None:
    strip = _strip()  # gap 4; read with gap 9 the width still splits into 5 panels, the gaps are not white
    assert (strip.shape[1] - 4 * 9) % 5 == 0
    with pytest.raises(ValueError, match="gap it was made with"):
        change_map_figure(strip, CAPTION, gap=9)


def test_the_best_seed_0_cell_s_maps_are_annotated_with_its_caption(tmp_path: Path) -> None:
    change_tables = load_script("benchmarks/change_tables.py")
    config = GridConfig.from_dict({
        "config_path": "loco.yaml", "task": "change", "results_name": "change_loco", "seeds": [0, 1],
        "inits": ["random", "rs_mae"], "datasets": {"oscd-pisa": {"task": "oscd", "test_root": "x"}},
        "cells_dir": str(tmp_path / "cells"), "grid": [{"protocols": ["frozen"], "datasets": ["oscd-pisa"]}]})
    results = [{"dataset": "oscd-pisa", "init": init, "protocol": "frozen", "seed": seed, "f1": f1}
               for init, seed, f1 in [("random", 0, 0.3), ("rs_mae", 0, 0.4), ("rs_mae", 1, 0.9)]]
    for r in results:
        Image.fromarray(_strip()).save(_maps(cell_path(config.cells_dir, r)) / "pisa.png")
    (path,) = change_tables._copy_maps(config, results, tmp_path / "results")
    assert path == tmp_path / "results" / "change_maps" / "change_loco" / "oscd-pisa_rs_mae_frozen_pisa.png"
    assert Image.open(path).height > 40  # annotated, not copied
    caption = change_tables.map_caption("oscd-pisa", "pisa", "rs_mae", "frozen", "change_loco", 40.0)
    assert caption.startswith("oscd-pisa pisa: init rs_mae (our MAE (Sentinel-2)), protocol frozen, seed 0")
    assert "highest F1 (40.0, pooled over its test scenes) on oscd-pisa in change_loco" in caption
    assert "highest F1 on" in change_tables.map_caption("oscd", "pisa", "random", "full", "change_detection")


def _maps(result: Path) -> Path:
    maps = result.with_suffix("") / "maps"
    maps.mkdir(parents=True)
    return maps
