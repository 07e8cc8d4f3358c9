"""MAE and RC-MAE on a spectral encoder (issue 24): reconstruction of whatever bands the batch holds."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from rsmae.bands import LAYOUTS
from rsmae.errors import BandError
from rsmae.models import (
    RCMAE,
    MaskedAutoencoder,
    SpectralPatchHead,
    create_encoder,
    embed_patch_tokens,
    mae_decoder_defaults,
    masked_mse,
    use_bands,
)
from tests.models.mae_helpers import fixed_noise

EUROSAT = list(LAYOUTS["eurosat"][1])  # the tiles fixture's channel order (B8A last)
RGBN = ["B04", "B03", "B02", "B08"]


def _spectral_mae(bands: list[str] = EUROSAT, **spectral: object) -> MaskedAutoencoder:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=len(bands), img_size=32, patch_size=8, patch_embed="spectral",
                         bands=bands, sensor="s2-l1c", spectral_embed=spectral or None)
    return MaskedAutoencoder(enc, **mae_decoder_defaults("vit_test"))


def _pick(tiles: Tensor, names: list[str]) -> Tensor:
    return tiles[:, [EUROSAT.index(n) for n in names]]


def test_fixed_bands_keep_their_linear_head() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8),
                            **mae_decoder_defaults("vit_test"))
    assert type(mae.decoder_pred) is nn.Linear and mae.decoder_pred.out_features == 64 * 13
    assert mae.bands is None


def test_reconstructs_the_bands_of_the_batch(tiles: Tensor) -> None:
    mae = _spectral_mae()
    assert isinstance(mae.decoder_pred, SpectralPatchHead)
    noise = fixed_noise(mae, 4)
    out = mae(tiles, noise=noise)
    assert out.pred.shape == (4, 16, 64 * 13) and torch.isfinite(out.loss)
    x = _pick(tiles, RGBN)
    with use_bands(mae, RGBN):
        sub = mae(x, noise=noise)
    assert mae.bands == tuple(EUROSAT)  # restored after the block
    assert sub.pred.shape == (4, 16, 64 * 4)
    # the loss is norm_pix over each patch's P*P*C values of the batch's bands, on the masked patches
    assert_close(sub.loss, masked_mse(sub.pred, mae.target(x), sub.mask))
    sub.loss.backward()
    head, embed = mae.decoder_pred, mae.encoder.patch_embed
    for param in (head.hyper[0].weight, head.to_weight.weight, embed.hyper[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_a_band_is_predicted_from_that_band_alone() -> None:
    """The head's output of a subset (any order) is the matching columns of the full output (p, q, c)."""
    head = _spectral_mae().decoder_pred
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    full = head(x, EUROSAT, "s2-l1c").detach().view(2, 5, 64, 13)
    keep = ["B8A", "B02", "B11"]
    sub = head(x, keep, "s2-l1c").detach().view(2, 5, 64, 3)
    assert_close(sub, full[..., [EUROSAT.index(b) for b in keep]], rtol=1e-5, atol=1e-6)
    # initial per-band weights are xavier-like: predictions of unit tokens have a sane scale
    assert 0.3 < float(full.std()) < 3.0


def test_visible_patches_are_embedded_alone(tiles: Tensor) -> None:
    mae = _spectral_mae()
    ids = fixed_noise(mae, 4).argsort(1)[:, :4]
    embed = mae.encoder.patch_embed
    fast = embed_patch_tokens(embed, tiles, ids)
    full = embed(tiles)
    assert_close(fast, torch.gather(full, 1, ids[..., None].expand(-1, -1, full.shape[-1])),
                 rtol=1e-5, atol=1e-5)


def test_wrong_channel_count_names_use_bands(tiles: Tensor) -> None:
    mae = _spectral_mae()
    with pytest.raises(BandError, match="use_bands"):
        mae(_pick(tiles, RGBN), noise=fixed_noise(mae, 4))


def test_learned_bands_get_learned_output_weights(tiles: Tensor) -> None:
    mae = _spectral_mae(learned_bands=["VV"])
    assert list(mae.decoder_pred.learned_weights) == ["VV"]
    x = torch.cat([_pick(tiles, ["B04"]), tiles[:, :1] * 0.5], dim=1)
    with use_bands(mae, ["B04", "VV"]):
        out = mae(x, noise=fixed_noise(mae, 4))
    assert out.pred.shape == (4, 16, 64 * 2)
    out.loss.backward()
    assert mae.decoder_pred.learned_weights["VV"].grad.abs().sum() > 0


def test_rcmae_teacher_sees_the_student_bands(tiles: Tensor) -> None:
    model = RCMAE(_spectral_mae())
    noise = fixed_noise(model.student, 4)
    with use_bands(model.student, RGBN):  # the student only: the teacher follows
        out = model(_pick(tiles, RGBN), noise=noise)
    assert out.pred.shape == (4, 16, 64 * 4)
    assert float(out.consistency_loss) == 0.0  # the teacher is the student's copy at step 0
    assert model.teacher.bands == tuple(EUROSAT)  # restored
    out.loss.backward()
    model.update_teacher(0.5)
    with use_bands(model, ["B11", "B12"]):
        later = model(_pick(tiles, ["B11", "B12"]), noise=noise)
    assert later.pred.shape == (4, 16, 64 * 2) and torch.isfinite(later.loss)
