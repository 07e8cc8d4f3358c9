"""Shared by the model tests (real EuroSAT tiles are the ``tiles`` fixture of tests/conftest.py): a tiny
MAE factory, band subsets and fixed masking noise."""

from __future__ import annotations

import torch

from rsmae.models import MaskedAutoencoder, create_encoder, mae_decoder_defaults

RGB = [3, 2, 1]  # EuroSAT file order: B01..B12, B8A
RGBN = [3, 2, 1, 7]
S2_GROUPS = [[1, 2, 3, 7], [4, 5, 6, 10, 11, 12], [0, 8, 9]]  # 10 m, 20 m, 60 m bands


def make_mae(in_chans: int = 13, img_size: int = 32, patch_size: int = 8, **kwargs) -> MaskedAutoencoder:
    torch.manual_seed(0)
    groups = kwargs.pop("band_groups", None)
    enc = create_encoder(
        "vit_test", in_chans=in_chans, img_size=img_size, patch_size=patch_size, band_groups=groups
    )
    return MaskedAutoencoder(enc, **{**mae_decoder_defaults("vit_test"), **kwargs})


def bands(tiles: torch.Tensor, n: int) -> torch.Tensor:
    return {13: tiles, 4: tiles[:, RGBN], 3: tiles[:, RGB]}[n]


def fixed_noise(model: MaskedAutoencoder, batch: int, seed: int = 0) -> torch.Tensor:
    return model.make_noise(batch, generator=torch.Generator().manual_seed(seed))
