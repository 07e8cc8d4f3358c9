"""Random batch-level augmentation modules: D4 element, free rotation, multiscale crop, RSAugment.

Each module draws its parameters from the ``generator`` passed to ``forward`` and applies the pure
ops of :mod:`rsmae.augment.functional`; batch conventions are described in :mod:`rsmae.augment`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rsmae.augment.functional import _cast, d4_transform, resized_crop, rotate_inscribed

__all__ = ["Batch", "RSAugment", "RandomDihedral", "RandomResizedCropGSD", "RandomRotation"]

Batch = dict[str, Tensor]

_MAX_CROP_TRIES = 10  # candidate crops drawn per sample, as kornia/torchvision RandomResizedCrop


def _unpack(batch: Batch) -> tuple[Tensor, Tensor]:
    """Return ``(image, gsd)`` of a batch; raise ``KeyError``/``ValueError`` if malformed."""
    for key in ("image", "gsd"):
        if key not in batch:
            raise KeyError(
                f"batch has no {key!r} key (keys: {sorted(batch)}); augmentations need "
                "'image' (B, C, H, W) and 'gsd' (B,) in metres per pixel"
            )
    image, gsd = batch["image"], batch["gsd"]
    if image.dim() != 4:
        raise ValueError(f"batch['image'] must be (B, C, H, W), got shape {tuple(image.shape)}")
    if gsd.shape != image.shape[:1]:
        raise ValueError(
            f"batch['gsd'] must have shape ({image.shape[0]},), one value per image; "
            f"got {tuple(gsd.shape)}"
        )
    return image, gsd


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Draw float64 uniforms in [0, 1) on the generator's device (CPU when ``None``)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _check_probability(p: float, name: str) -> None:
    """Raise ``ValueError`` unless ``p`` is in [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def _check_range(value: tuple[float, float], name: str, upper: float = math.inf) -> None:
    """Raise ``ValueError`` unless ``value`` is ``(low, high)``, ``0 < low <= high <= upper``."""
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= upper:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= {upper}, got {value}")


class RandomDihedral(nn.Module):
    """Apply one of the 8 D4 elements per sample, uniformly; exact, gsd unchanged.

    Images must be square so that every element keeps the batch shape.
    """

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Transform each sample by a random D4 element.

        Args:
            batch: Batch dict with ``"image"`` (B, C, H, W), H == W, and ``"gsd"`` (B,).
            generator: Source of randomness; torch's default generator when ``None``.

        Returns:
            A new batch dict with ``"image"`` transformed and ``"gsd"`` unchanged.

        Raises:
            ValueError: If the images are not square.
        """
        image, gsd = _unpack(batch)
        if image.shape[-2] != image.shape[-1]:
            raise ValueError(
                f"RandomDihedral needs square images, got H x W = "
                f"{image.shape[-2]} x {image.shape[-1]}"
            )
        elements = (_rand((image.shape[0],), generator) * 8).long().clamp_(max=7)
        elements = elements.to(image.device)
        out = torch.empty_like(image)
        for k in range(8):
            idx = (elements == k).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = d4_transform(image[idx], k)
        return {**batch, "image": out, "gsd": gsd}


class RandomRotation(nn.Module):
    """Rotate by a uniform angle in [-degrees, degrees], cropping away the empty corners.

    See :func:`rotate_inscribed`. The zoom-in shrinks the ground footprint of a pixel, so
    ``gsd *= crop_side / H = 1 / (|cos a| + |sin a|)``. Samples not selected (probability
    ``1 - p``) are returned bit-for-bit unchanged.

    Args:
        degrees: Largest absolute rotation angle in degrees (>= 0).
        p: Probability of rotating each sample.
    """

    def __init__(self, degrees: float, *, p: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(degrees) and degrees >= 0):
            raise ValueError(f"degrees must be a finite number >= 0, got {degrees}")
        _check_probability(p, "p")
        self.degrees = float(degrees)
        self.p = float(p)

    def extra_repr(self) -> str:
        """Return the constructor arguments for ``repr``."""
        return f"degrees={self.degrees}, p={self.p}"

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Rotate a random subset of the batch.

        Args:
            batch: Batch dict with ``"image"`` (B, C, H, W) and ``"gsd"`` (B,).
            generator: Source of randomness; torch's default generator when ``None``.

        Returns:
            A new batch dict with ``"image"`` and ``"gsd"`` updated.
        """
        image, gsd = _unpack(batch)
        draws = _rand((2, image.shape[0]), generator)  # same draws whatever p selects
        angles = (2.0 * draws[0] - 1.0) * self.degrees
        selected = (draws[1] < self.p).nonzero(as_tuple=True)[0]
        if selected.numel() == 0:
            return {**batch, "image": image, "gsd": gsd}
        idx = selected.to(image.device)
        rotated, factor = rotate_inscribed(image[idx], angles[selected])
        factor = _cast(factor, gsd)
        if selected.numel() == image.shape[0]:
            return {**batch, "image": rotated, "gsd": gsd * factor}
        image, gsd = image.clone(), gsd.clone()
        image[idx] = rotated
        gsd_idx = selected.to(gsd.device)
        gsd[gsd_idx] = gsd[gsd_idx] * factor
        return {**batch, "image": image, "gsd": gsd}


def _sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> Tensor:
    """Draw random-resized-crop boxes as kornia's ``ResizedCropGenerator`` does, from a generator.

    Per sample, up to 10 candidates with area fraction uniform in ``scale`` and aspect ratio
    (w / h) log-uniform in ``ratio``; the first that fits is kept, else torchvision's fallback (the
    whole image, narrowed to the ratio range). The position is uniform over valid offsets.

    Args:
        n: Number of boxes.
        height: Image height.
        width: Image width.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio w / h.
        generator: Source of randomness; torch's default generator when ``None``.

    Returns:
        Long tensor (n, 4) of ``(x0, y0, w, h)`` on CPU.
    """
    draws = _rand((2, n, _MAX_CROP_TRIES), generator).cpu()
    offsets = _rand((2, n), generator).cpu()
    area = (scale[0] + draws[0] * (scale[1] - scale[0])) * height * width
    aspect = torch.exp(math.log(ratio[0]) + draws[1] * (math.log(ratio[1]) - math.log(ratio[0])))
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # index of the first fitting candidate
    in_ratio = width / height
    fall_w = width if in_ratio <= ratio[1] else round(height * ratio[1])
    fall_h = height if in_ratio >= ratio[0] else round(width / ratio[0])
    ok = fits.any(1)
    w = torch.where(ok, w.gather(1, first)[:, 0], float(fall_w)).clamp(1, width).long()
    h = torch.where(ok, h.gather(1, first)[:, 0], float(fall_h)).clamp(1, height).long()
    x0 = (offsets[0] * (width - w + 1)).long().clamp(max=width - w)
    y0 = (offsets[1] * (height - h + 1)).long().clamp(max=height - h)
    return torch.stack([x0, y0, w, h], 1)


class RandomResizedCropGSD(nn.Module):
    """Multiscale random resized crop that keeps the gsd of each sample exact.

    Crop boxes are drawn like kornia's ``RandomResizedCrop`` (area fraction in ``scale``, aspect
    ratio w / h log-uniform in ``ratio``) and resized with :func:`resized_crop`. The effective gsd
    becomes ``gsd * sqrt((w / out_w) * (h / out_h))``: exact for square crops and outputs, the
    geometric mean of the two axes (ground area per pixel preserved) otherwise.

    Args:
        size: Output ``(height, width)`` or side; ``None`` keeps the input size.
        scale: Range of the crop area as a fraction of the image area, within (0, 1].
        ratio: Range of the crop aspect ratio w / h.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        *,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        super().__init__()
        if isinstance(size, int):
            size = (size, size)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be a positive int, (height, width) or None, got {size}")
        _check_range(tuple(scale), "scale", upper=1.0)
        _check_range(tuple(ratio), "ratio")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def extra_repr(self) -> str:
        """Return the constructor arguments for ``repr``."""
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}"

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Crop and resize every sample, updating its gsd.

        Args:
            batch: Batch dict with ``"image"`` (B, C, H, W) and ``"gsd"`` (B,).
            generator: Source of randomness; torch's default generator when ``None``.

        Returns:
            A new batch dict with ``"image"`` (B, C, *size) and ``"gsd"`` updated.
        """
        image, gsd = _unpack(batch)
        height, width = image.shape[-2:]
        size = self.size or (height, width)
        boxes = _sample_crop_boxes(image.shape[0], height, width, self.scale, self.ratio, generator)
        crops, factor = resized_crop(image, boxes, size)
        return {**batch, "image": crops, "gsd": gsd * _cast(factor, gsd)}


class RSAugment(nn.Module):
    """Remote-sensing augmentation: multiscale crop, then free rotation, then a D4 element.

    Each stage is optional; all draw from the generator passed to ``forward`` in that order. The
    crop keeps the input size.

    Args:
        dihedral: Apply a uniform random D4 element (exact rotations by 90 degrees and flips).
        rotate_degrees: Largest angle of the free rotation; 0 disables it. Rotation zooms in to
            drop the empty corners (see :class:`RandomRotation`).
        crop_scale: Area range of the random resized crop; ``None`` disables it.
        crop_ratio: Aspect-ratio range (w / h) of the random resized crop.
        p_rotate: Probability of the free rotation per sample.
    """

    def __init__(
        self,
        *,
        dihedral: bool = True,
        rotate_degrees: float = 0.0,
        crop_scale: tuple[float, float] | None = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p_rotate: float = 0.5,
    ) -> None:
        super().__init__()
        _check_probability(p_rotate, "p_rotate")
        stages: list[nn.Module] = []
        if crop_scale is not None:
            stages.append(RandomResizedCropGSD(scale=crop_scale, ratio=crop_ratio))
        if rotate_degrees != 0.0:
            stages.append(RandomRotation(rotate_degrees, p=p_rotate))
        if dihedral:
            stages.append(RandomDihedral())
        self.stages = nn.ModuleList(stages)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Apply the enabled stages in order.

        Args:
            batch: Batch dict with ``"image"`` (B, C, H, W) and ``"gsd"`` (B,).
            generator: Source of randomness; torch's default generator when ``None``.

        Returns:
            A new batch dict with ``"image"`` and ``"gsd"`` updated.
        """
        _unpack(batch)
        out = dict(batch)
        for stage in self.stages:
            out = stage(out, generator)
        return out
