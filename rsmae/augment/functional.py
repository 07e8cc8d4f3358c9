"""Pure geometric ops on image tensors: the D4 group, corner-free rotation and integer-box crops.

Nothing here is random: each op takes its parameters (group element, angles, boxes) and, where the
ground footprint of a pixel changes, returns the gsd factor too. The random batch-level modules in
:mod:`rsmae.augment.modules` draw the parameters and call these. Interpolating ops are kornia's
(bilinear); the dihedral group is exact (``torch.rot90``/``torch.flip``).
"""

from __future__ import annotations

import torch
from kornia.geometry.transform import crop_by_indices, get_rotation_matrix2d, warp_affine
from torch import Tensor

__all__ = ["d4_inverse", "d4_transform", "resized_crop", "rotate_inscribed"]


def _cast(values: Tensor, like: Tensor) -> Tensor:
    """Cast parameters to ``like``'s dtype, then device (no float64 on e.g. MPS)."""
    return values.to(dtype=like.dtype).to(like.device)


def d4_transform(images: Tensor, element: int) -> Tensor:
    """Apply one element of the dihedral group D4 (symmetries of the square) to images.

    Element ``k`` is ``rot90^(k % 4)`` applied after a horizontal flip when ``k >= 4``:
    0 identity, 1-3 rotations by 90/180/270 degrees (``torch.rot90`` over the last two dims),
    4 horizontal flip, 5-7 the flip followed by the rotations. No pixel is interpolated.

    Args:
        images: Tensor of shape (..., H, W), e.g. (B, C, H, W). Odd rotations of a non-square
            image return (..., W, H).
        element: Group element in 0..7.

    Returns:
        The transformed images.

    Raises:
        ValueError: If ``element`` is not in 0..7.
    """
    if element not in range(8):
        raise ValueError(f"D4 element must be an int in 0..7, got {element!r}")
    if element >= 4:
        images = images.flip(-1)
    return torch.rot90(images, element % 4, dims=(-2, -1))


def d4_inverse(element: int) -> int:
    """Return the inverse of a D4 element (for test-time augmentation and its undo).

    Args:
        element: Group element in 0..7 as in :func:`d4_transform`.

    Returns:
        The element ``j`` with ``d4_transform(d4_transform(x, element), j) == x``.

    Raises:
        ValueError: If ``element`` is not in 0..7.
    """
    if element not in range(8):
        raise ValueError(f"D4 element must be an int in 0..7, got {element!r}")
    return element if element >= 4 else (4 - element) % 4  # reflections are involutions


def rotate_inscribed(images: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate images and zoom in so that no empty corner remains.

    Equivalent to rotating by ``angles``, centre-cropping the largest axis-aligned rectangle of
    the input's aspect ratio inscribed in the rotated image (for a square of side H, the square of
    side ``H / (|cos a| + |sin a|)``) and resizing it back to (H, W). The three steps are done as
    one kornia affine warp (rotation about the centre with scale ``|cos a| + |sin a|``), so pixels
    are resampled once, bilinearly. Zooming in never downsamples, so no antialiasing is needed.
    Geometry is on pixel centres (``align_corners=True``): output corner pixels sample inside the
    input, so zero padding never enters the result.

    Args:
        images: Tensor of shape (B, C, H, W).
        angles: Rotation angles in degrees, shape (B,); positive is counter-clockwise as
            displayed (kornia's convention), so 90 equals ``d4_transform(images, 1)``.

    Returns:
        The rotated images (B, C, H, W) and the per-sample gsd factor ``crop_side / H``
        (= ``1 / scale``), shape (B,), float64, on CPU.
    """
    height, width = images.shape[-2:]
    aspect = max(width - 1, 1) / max(height - 1, 1)  # pixel-centre extents, see align_corners
    rad = torch.deg2rad(angles.detach().to("cpu", torch.float64))
    cos, sin = rad.cos().abs(), rad.sin().abs()
    scale = torch.maximum(cos + sin / aspect, cos + sin * aspect)
    center = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=images.dtype)
    center = center.to(images.device).expand(len(angles), 2)
    scale_xy = _cast(scale, images)[:, None].expand(-1, 2).contiguous()
    matrix = get_rotation_matrix2d(center, _cast(angles, images), scale_xy)
    rotated = warp_affine(
        images, matrix, (height, width), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return rotated, 1.0 / scale


def resized_crop(images: Tensor, boxes: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Crop integer boxes and resize them to ``size`` with kornia (bilinear, antialiased).

    Resizing uses the half-pixel convention (``align_corners=False``), so the output pixel spacing
    is exactly ``w / size[1]`` and ``h / size[0]`` input pixels. For a non-square crop or output
    the two axes differ; the returned single gsd factor is their geometric mean
    ``sqrt((w / size[1]) * (h / size[0]))``, which keeps the ground area of a pixel exact.

    Args:
        images: Tensor of shape (B, C, H, W).
        boxes: Integer tensor (B, 4) of ``(x0, y0, w, h)`` in pixels, inside the image.
        size: Output ``(height, width)``.

    Returns:
        The crops (B, C, *size) and the gsd factor per sample, shape (B,), float64, on CPU.

    Raises:
        ValueError: If a box leaves the image or is empty.
    """
    boxes = boxes.to("cpu", torch.long)
    x0, y0, w, h = boxes.unbind(-1)
    height, width = images.shape[-2:]
    if bool(((w < 1) | (h < 1) | (x0 < 0) | (y0 < 0) | (x0 + w > width) | (y0 + h > height)).any()):
        raise ValueError(
            f"crop boxes (x0, y0, w, h) must be non-empty and inside the "
            f"{height} x {width} image, got {boxes.tolist()}"
        )
    x1, y1 = x0 + w - 1, y0 + h - 1  # kornia boxes hold inclusive corner pixels
    xy = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))  # clockwise from top-left
    corners = torch.stack([torch.stack(point, -1) for point in xy], 1)
    crops = crop_by_indices(
        images,
        corners.float(),
        size=size,
        interpolation="bilinear",
        align_corners=False,
        antialias=True,
    )
    factor = torch.sqrt((w / size[1]) * (h / size[0])).to(torch.float64)
    return crops, factor
