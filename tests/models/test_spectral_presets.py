"""The any-sensor timm presets (issue 24): registered only by an explicit call, spectral embedding."""

from __future__ import annotations

import subprocess
import sys

import timm
import torch

from rsmae.bands import get_sensor
from rsmae.models import SpectralPatchEmbed, use_bands
from rsmae.models.spectral_zoo import register_spectral_models
from tests.conftest import ROOT


def test_importing_registers_nothing() -> None:
    code = ("import timm, rsmae.models.spectral_zoo as z\n"
            "print(timm.is_model('rsmae_vit_small_spectral'), len(z.register_spectral_models()),\n"
            "      timm.is_model('rsmae_vit_small_spectral'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False 3 True"


def test_registered_presets_have_the_spectral_embedding() -> None:
    names = register_spectral_models()
    assert register_spectral_models() == names  # idempotent
    assert {"rsmae_vit_tiny_spectral", "rsmae_vit_small_spectral"} <= set(names)
    encoder = timm.create_model("rsmae_vit_test_spectral", img_size=32, patch_size=8).eval()
    assert isinstance(encoder.patch_embed, SpectralPatchEmbed)
    assert encoder.patch_embed.bands == get_sensor("s2-l1c").names and encoder.num_classes == 0
    with torch.no_grad():
        assert encoder.forward_features(torch.randn(1, 13, 32, 32)).shape == (1, 17, 64)
        with use_bands(encoder, ["B4", "B3", "B2"], sensor="landsat-oli"):
            assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    rgb = timm.create_model("rsmae_vit_tiny_spectral", bands=["R", "G", "B"], img_size=32, patch_size=8)
    assert rgb.patch_embed.in_chans == 3 and rgb.embed_dim == 192
