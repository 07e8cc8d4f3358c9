"""Tests for rsmae.augment: band order, D4 group, corner-free rotation, gsd bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsmae.augment import (
    RandomDihedral,
    RandomResizedCropGSD,
    RandomRotation,
    RSAugment,
    d4_inverse,
    d4_transform,
    resized_crop,
    rotate_inscribed,
)
from tests.conftest import EUROSAT

EUROSAT_FOREST = EUROSAT / "train" / "Forest"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(image: torch.Tensor, gsd: float = 10.0) -> dict:
    n = image.shape[0]
    return {
        "image": image,
        "gsd": torch.full((n,), gsd),
        "id": list(range(n)),
        "label": torch.arange(n),
    }


def _modules() -> dict:
    return {
        "dihedral": RandomDihedral(),
        "rotation": RandomRotation(60.0),
        "crop": RandomResizedCropGSD(scale=(0.3, 1.0)),
        "rsaugment": RSAugment(rotate_degrees=180.0, p_rotate=0.5),
    }


MODULE_NAMES = list(_modules())


# ---------------------------------------------------------------- band order


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("channels", [3, 4, 13])
def test_band_order_constant_bands(name: str, channels: int) -> None:
    values = torch.arange(1, channels + 1, dtype=torch.float32)
    image = values[None, :, None, None].expand(6, channels, 24, 24).contiguous()
    out = _modules()[name](_batch(image), _gen(0))["image"]
    expected = values[None, :, None, None].expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("channels", [3, 4, 13])
def test_band_order_scaled_pattern(name: str, channels: int) -> None:
    base = torch.rand(6, 1, 24, 24, generator=_gen(1)) + 0.5
    factors = torch.arange(1, channels + 1, dtype=torch.float32)[None, :, None, None]
    out = _modules()[name](_batch(base * factors), _gen(2))["image"]
    torch.testing.assert_close(out, out[:, :1] * factors, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out[:, :1], out[:, 1:2])


# ---------------------------------------------------------------- D4


def _asymmetric(size: int = 5) -> torch.Tensor:
    return torch.arange(2 * size * size, dtype=torch.float32).reshape(1, 2, size, size)


def test_d4_elements_pairwise_distinct() -> None:
    outs = [d4_transform(_asymmetric(), k) for k in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(outs[i], outs[j]), (i, j)


def test_d4_inverse_and_closure() -> None:
    x = _asymmetric()
    outs = [d4_transform(x, k) for k in range(8)]
    for a in range(8):
        assert torch.equal(d4_transform(d4_transform(x, a), d4_inverse(a)), x)
        for b in range(8):
            composed = d4_transform(d4_transform(x, a), b)
            assert sum(torch.equal(composed, o) for o in outs) == 1, (a, b)


def test_d4_element_one_is_kornia_positive_90() -> None:
    x = torch.rand(2, 3, 9, 9, generator=_gen(3))
    rotated, factor = rotate_inscribed(x, torch.tensor([90.0, 90.0]))
    torch.testing.assert_close(rotated, d4_transform(x, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(factor, torch.ones(2, dtype=torch.float64))


def test_d4_rejects_bad_element() -> None:
    with pytest.raises(ValueError, match="0..7"):
        d4_transform(_asymmetric(), 8)
    with pytest.raises(ValueError, match="0..7"):
        d4_inverse(-1)


def test_random_dihedral_is_exact_and_uniform() -> None:
    image = torch.rand(800, 2, 6, 6, generator=_gen(4))
    batch = _batch(image)
    out = RandomDihedral()(batch, _gen(5))
    counts = [0] * 8
    for x, y in zip(image, out["image"], strict=True):
        matches = [k for k in range(8) if torch.equal(d4_transform(x, k), y)]
        assert len(matches) == 1
        counts[matches[0]] += 1
    assert min(counts) > 60 and max(counts) < 140, counts  # expected 100 each
    assert torch.equal(out["gsd"], batch["gsd"])


def test_random_dihedral_needs_square() -> None:
    with pytest.raises(ValueError, match="square"):
        RandomDihedral()(_batch(torch.rand(2, 3, 8, 9)))


# ---------------------------------------------------------------- rotation


def test_rotation_zero_is_identity() -> None:
    x = torch.rand(3, 4, 16, 16, generator=_gen(6))
    rotated, factor = rotate_inscribed(x, torch.zeros(3))
    torch.testing.assert_close(rotated, x, atol=1e-5, rtol=0)
    assert torch.equal(factor, torch.ones(3, dtype=torch.float64))
    out = RandomRotation(0.0)(_batch(x), _gen(0))
    torch.testing.assert_close(out["image"], x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["gsd"], torch.full((3,), 10.0))


@pytest.mark.parametrize("shape", [(16, 16), (17, 17), (16, 24)])
def test_rotation_leaves_no_empty_corners(shape: tuple[int, int]) -> None:
    angles = torch.tensor([1.0, 30.0, 45.0, -60.0, 89.0, 135.0, 180.0, -170.0])
    rotated, _ = rotate_inscribed(torch.ones(8, 4, *shape), angles)
    assert rotated.min() > 1 - 1e-4
    out = RandomRotation(180.0)(_batch(torch.ones(32, 3, *shape)), _gen(7))["image"]
    assert out.min() > 1 - 1e-4


def test_rotation_gsd_is_exact() -> None:
    angles = torch.tensor([0.0, 30.0, 45.0, -45.0, 90.0, -120.0])
    _, factor = rotate_inscribed(torch.rand(6, 3, 8, 8), angles)
    rad = [math.radians(a) for a in angles.tolist()]
    expected = torch.tensor([1 / (abs(math.cos(a)) + abs(math.sin(a))) for a in rad])
    torch.testing.assert_close(factor, expected.double())
    assert factor[2].item() == pytest.approx(1 / math.sqrt(2))


def test_rotation_gsd_in_range_and_p() -> None:
    image = torch.rand(64, 3, 16, 16, generator=_gen(8))
    batch = _batch(image)
    out = RandomRotation(45.0, p=0.5)(batch, _gen(9))
    rotated = out["gsd"] < 10.0
    assert 0 < rotated.sum() < 64
    assert out["gsd"].min() >= 10 / math.sqrt(2) - 1e-4
    assert torch.equal(out["image"][~rotated], image[~rotated])  # untouched samples bit-exact
    none = RandomRotation(45.0, p=0.0)(batch, _gen(9))
    assert torch.equal(none["image"], image) and torch.equal(none["gsd"], batch["gsd"])


# ---------------------------------------------------------------- resized crop


def test_resized_crop_known_boxes_gsd_and_content() -> None:
    image = torch.rand(3, 4, 32, 32, generator=_gen(10))
    boxes = torch.tensor([[0, 0, 32, 32], [8, 4, 16, 16], [3, 5, 16, 9]])
    crops, factor = resized_crop(image, boxes, (32, 32))
    expected = torch.tensor([1.0, 0.5, math.sqrt(16 * 9) / 32], dtype=torch.float64)
    torch.testing.assert_close(factor, expected)
    torch.testing.assert_close(crops[0], image[0])
    same_size, factor = resized_crop(image, boxes[1:2].repeat(3, 1), (16, 16))
    assert torch.equal(same_size, image[:, :, 4:20, 8:24])
    assert torch.equal(factor, torch.ones(3, dtype=torch.float64))


def test_resized_crop_downscale_gsd() -> None:
    image = torch.rand(2, 3, 32, 32, generator=_gen(11))
    crops, factor = resized_crop(image, torch.tensor([[0, 0, 32, 32], [0, 0, 24, 24]]), (8, 8))
    assert crops.shape == (2, 3, 8, 8)
    torch.testing.assert_close(factor, torch.tensor([4.0, 3.0], dtype=torch.float64))


def test_resized_crop_rejects_outside_box() -> None:
    with pytest.raises(ValueError, match="inside"):
        resized_crop(torch.rand(1, 3, 8, 8), torch.tensor([[4, 0, 8, 8]]), (8, 8))


def test_random_resized_crop_gsd_matches_crop_extent() -> None:
    """Recover each crop's width/height from coordinate ramps and check the gsd update."""
    n, size = 16, 32
    xs = torch.arange(size, dtype=torch.float32)
    ramps = torch.stack([xs[None, :].expand(size, size), xs[:, None].expand(size, size)])
    batch = _batch(ramps.expand(n, 2, size, size).contiguous(), gsd=10.0)
    scale, ratio = (0.2, 0.9), (0.5, 2.0)
    out = RandomResizedCropGSD(scale=scale, ratio=ratio)(batch, _gen(12))
    # Upsampled crops, half-pixel grid: output pixel j samples x0 + (j + 0.5) * w / size - 0.5,
    # linear in j away from the clamped borders, so two interior pixels give the crop extent.
    image, j1, j2 = out["image"], size // 4, 3 * size // 4
    w = (image[:, 0, 0, j2] - image[:, 0, 0, j1]) * size / (j2 - j1)
    h = (image[:, 1, j2, 0] - image[:, 1, j1, 0]) * size / (j2 - j1)
    torch.testing.assert_close(w, w.round(), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["gsd"], 10.0 * torch.sqrt(w * h) / size, atol=1e-4, rtol=1e-5)
    area = w * h / size**2
    assert (area >= scale[0] - 0.05).all() and (area <= scale[1] + 0.05).all()
    assert ((w / h) > ratio[0] * 0.8).all() and ((w / h) < ratio[1] * 1.25).all()
    assert len(set(w.round().tolist())) > 1


def test_random_resized_crop_output_size() -> None:
    out = RandomResizedCropGSD(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))(
        _batch(torch.rand(2, 5, 64, 64)), _gen(0)
    )
    assert out["image"].shape == (2, 5, 16, 16)
    torch.testing.assert_close(out["gsd"], torch.full((2,), 40.0))


# ---------------------------------------------------------------- generic behaviour


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_generator_determinism(name: str) -> None:
    module = _modules()[name]
    batch = _batch(torch.rand(8, 4, 16, 16, generator=_gen(13)))
    a, b = module(batch, _gen(42)), module(batch, _gen(42))
    c = module(batch, _gen(43))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gsd"], b["gsd"])
    assert not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_passthrough_and_no_mutation(name: str) -> None:
    image = torch.rand(4, 3, 16, 16, generator=_gen(14))
    batch = _batch(image.clone())
    keys, gsd = dict(batch), batch["gsd"].clone()
    out = _modules()[name](batch, _gen(15))
    assert out is not batch and set(out) == set(batch)
    assert out["id"] is batch["id"] and out["label"] is batch["label"]
    assert all(batch[k] is keys[k] for k in keys)
    assert torch.equal(batch["image"], image) and torch.equal(batch["gsd"], gsd)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_autograd_no_grad_and_dtype(name: str) -> None:
    module = _modules()[name]
    image = torch.rand(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    batch = {"image": image, "gsd": torch.full((4,), 10.0, dtype=torch.float64)}
    out = module(batch, _gen(16))
    assert out["image"].dtype == torch.float64 and out["gsd"].dtype == torch.float64
    out["image"].sum().backward()
    assert (
        image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    )
    with torch.no_grad():
        assert not module(batch, _gen(16))["image"].requires_grad


def test_default_generator_is_used_when_none() -> None:
    batch = _batch(torch.rand(8, 3, 16, 16, generator=_gen(17)))
    torch.manual_seed(0)
    a = RSAugment(rotate_degrees=90.0)(batch)
    torch.manual_seed(0)
    b = RSAugment(rotate_degrees=90.0)(batch)
    assert torch.equal(a["image"], b["image"])


def test_rsaugment_disabled_stages_is_identity() -> None:
    batch = _batch(torch.rand(2, 3, 8, 8))
    out = RSAugment(dihedral=False, rotate_degrees=0.0, crop_scale=None)(batch, _gen(0))
    assert torch.equal(out["image"], batch["image"]) and torch.equal(out["gsd"], batch["gsd"])


@pytest.mark.parametrize(
    "build",
    [
        lambda: RandomRotation(-1.0),
        lambda: RandomRotation(10.0, p=1.5),
        lambda: RandomResizedCropGSD(scale=(0.5, 1.5)),
        lambda: RandomResizedCropGSD(ratio=(2.0, 1.0)),
        lambda: RandomResizedCropGSD(size=0),
        lambda: RSAugment(p_rotate=-0.1),
    ],
)
def test_invalid_arguments(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_missing_gsd_and_bad_shapes() -> None:
    with pytest.raises(KeyError, match="gsd"):
        RSAugment()({"image": torch.rand(2, 3, 8, 8)})
    with pytest.raises(ValueError, match="gsd"):
        RSAugment()({"image": torch.rand(2, 3, 8, 8), "gsd": torch.ones(3)})
    with pytest.raises(ValueError, match="B, C, H, W"):
        RSAugment()({"image": torch.rand(3, 8, 8), "gsd": torch.ones(3)})


# ---------------------------------------------------------------- real EuroSAT patch


def test_eurosat_end_to_end_bands_independent() -> None:
    """Augmenting all 13 bands at once equals augmenting each band alone with the same seed."""
    rasterio = pytest.importorskip("rasterio")
    files = sorted(EUROSAT_FOREST.glob("*.tif"))
    if not files:
        pytest.skip(f"no EuroSAT patches under {EUROSAT_FOREST}")
    with rasterio.open(files[0]) as src:
        pixels = src.read().astype(np.float32) / 10000.0
        gsd = math.sqrt(abs(src.res[0] * src.res[1]))
    image = torch.from_numpy(pixels)[None].repeat(4, 1, 1, 1)  # (4, 13, 64, 64)
    assert image.shape[1] == 13
    batch = {"image": image, "gsd": torch.full((4,), gsd), "label": torch.zeros(4)}
    augment = RSAugment(rotate_degrees=180.0, p_rotate=1.0, crop_scale=(0.3, 1.0))
    out = augment(batch, _gen(18))
    assert out["image"].shape == image.shape and torch.isfinite(out["image"]).all()
    assert (out["gsd"] <= gsd + 1e-4).all() and (out["gsd"] > 0.95 * gsd * math.sqrt(0.3 / 2)).all()
    assert len(set(out["gsd"].tolist())) == 4  # per-sample scales differ
    for band in range(13):
        single = augment({**batch, "image": image[:, band : band + 1]}, _gen(18))
        torch.testing.assert_close(out["image"][:, band : band + 1], single["image"])
        assert torch.equal(single["gsd"], out["gsd"])
    # Values stay within the band's range (bilinear interpolation and no zero padding).
    low, high = image.amin(dim=(0, 2, 3)), image.amax(dim=(0, 2, 3))
    assert (out["image"].amin(dim=(0, 2, 3)) >= low - 1e-5).all()
    assert (out["image"].amax(dim=(0, 2, 3)) <= high + 1e-5).all()
