"""Reconstruction images: un-normalising predictions, true colour, native-dtype stores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rsmae.data import ShardDataset, TileDataModule
from rsmae.tasks import PretrainTask, ReconstructionImages, reconstruct, true_colour


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruction_of_a_perfect_prediction_is_the_input(eurosat_store: Path, norm_pix: bool) -> None:
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, norm_pix_loss=norm_pix)
    data = ShardDataset(eurosat_store)
    images = torch.stack([data[i]["image"] for i in range(3)])
    out = task.student(images)
    recon, mask = reconstruct(images, out.target, out.mask, 8, norm_pix_loss=norm_pix)
    torch.testing.assert_close(recon, images, atol=1e-4, rtol=1e-4)
    assert mask.mean() == pytest.approx(0.75)
    wrong, _ = reconstruct(images, out.target.flip(0), out.mask, 8, norm_pix_loss=norm_pix)
    assert not torch.allclose(wrong, images, atol=1e-2)
    rgb = true_colour(images, data.bands, "s2-l1c")
    assert rgb.shape == (3, 3, 64, 64) and rgb.min() >= 0 and rgb.max() <= 1
    torch.testing.assert_close(rgb, true_colour(images[:, [3, 2, 1]], ["B04", "B03", "B02"], "s2-l1c"))


def test_reconstruction_images_of_native_data_are_normalised(eurosat_store: Path, tile_datamodule) -> None:
    native, plain = tile_datamodule(eurosat_store), TileDataModule([str(eurosat_store)], native=False)
    for dm in (native, plain):
        dm.setup("fit")
    assert native.val_set[0]["image"].dtype == torch.uint16  # the default ships the stores' dtype
    images = ReconstructionImages(num_images=3)._fixed_images(SimpleNamespace(datamodule=native), {})
    expected = torch.stack([plain.val_set[i]["image"] for i in range(3)])
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, expected)
