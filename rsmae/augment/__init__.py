"""Batch-level geometric augmentations for multispectral remote-sensing imagery.

Remote-sensing scenes have no canonical orientation and come at many scales, so rotations and
scale changes are free augmentations (METHOD.md, "Remote sensing is not ImageNet"). Every module
here works on a batch dict after it is moved to the device::

    {"image": (B, C, H, W) float tensor, "gsd": (B,) metres per pixel, ...other keys}

and returns a new dict with ``"image"`` and ``"gsd"`` replaced; other keys are passed through
untouched and the input dict is never mutated. Nothing assumes a number of bands: every op acts on
all channels alike, so band order is preserved for 3, 4, 12 or 13 bands.

Randomness comes only from the ``generator`` passed to ``forward`` (torch's default generator when
``None``). Parameters are drawn on the generator's device (CPU by default), so a seed gives the
same augmentation on CPU and GPU. Interpolating ops are kornia's (bilinear); the dihedral group is
exact (``torch.rot90``/``torch.flip``).

:func:`drop_bands` keeps a random subset of a batch's bands (for encoders that take any bands).

The pure tensor ops live in :mod:`rsmae.augment.functional`, the random modules in
:mod:`rsmae.augment.modules`; both are re-exported here.
"""

from rsmae.augment.band_drop import drop_bands
from rsmae.augment.functional import d4_inverse, d4_transform, resized_crop, rotate_inscribed
from rsmae.augment.modules import Batch as Batch  # the batch dict type
from rsmae.augment.modules import RandomDihedral, RandomResizedCropGSD, RandomRotation, RSAugment

__all__ = [
    "RSAugment",
    "RandomDihedral",
    "RandomResizedCropGSD",
    "RandomRotation",
    "d4_inverse",
    "d4_transform",
    "drop_bands",
    "resized_crop",
    "rotate_inscribed",
]
