"""Which bands of an evaluation dataset serve an encoder pretrained on other bands.

An encoder pretrained on RGB or Landsat tiles can still be probed on a Sentinel-2 dataset such as
EuroSAT: each of its input channels is fed the dataset band that is the same band (by name, through
:mod:`rsmae.bands`), plays the same true-colour role (R, G, B -> B04, B03, B02), or else has the
nearest central wavelength within :data:`MAX_WAVELENGTH_GAP_NM`. The first two steps are
:func:`rsmae.models.adapt.match_bands`, the pairing that adapts patch kernels to other bands.
"""

from __future__ import annotations

from collections.abc import Sequence

from rsmae.band_match import match_bands
from rsmae.bands import get_sensor
from rsmae.errors import BandError

__all__ = ["MAX_WAVELENGTH_GAP_NM", "match_dataset_bands"]

# Largest gap between central wavelengths for a dataset band to stand in for an encoder band:
# Landsat OLI pan (589.5 nm) takes B03 (559.8 nm), TM B5 (1650 nm) takes B11 (1613.7 nm).
MAX_WAVELENGTH_GAP_NM = 50.0


def match_dataset_bands(
    bands: Sequence[str],
    sensor: str,
    dataset_bands: Sequence[str],
    dataset_sensor: str,
    *,
    max_gap_nm: float = MAX_WAVELENGTH_GAP_NM,
) -> list[tuple[str | None, str]]:
    """The dataset band that feeds each encoder band, and how it was chosen.

    Args:
        bands: The encoder's bands, in channel order.
        sensor: Their registry sensor.
        dataset_bands: The dataset's bands.
        dataset_sensor: The dataset's registry sensor.
        max_gap_nm: Largest central-wavelength gap for the nearest-wavelength step.

    Returns:
        One ``(dataset band or None, how)`` per encoder band; ``how`` is ``"same band"``,
        ``"colour role"``, ``"nearest wavelength"`` or ``"none"`` (no dataset band within
        ``max_gap_nm``).

    Raises:
        BandError: on bands the registry does not know, or when no encoder band has a dataset band.
    """
    own, theirs = get_sensor(sensor), get_sensor(dataset_sensor)
    names, dataset_names = own.resolve(bands), theirs.resolve(dataset_bands)
    try:
        pairs = match_bands(dataset_names, names, src_sensor=theirs.name, dst_sensor=own.name).pairs
    except BandError:  # no band in common and no colour role: the wavelengths may still match
        pairs = {}
    out: list[tuple[str | None, str]] = []
    for j, name in enumerate(names):
        if j in pairs:
            same = theirs.band(dataset_names[pairs[j]]) == own.band(name)
            out.append((dataset_names[pairs[j]], "same band" if same else "colour role"))
            continue
        wavelength = own.band(name).wavelength_nm
        nearest = min(dataset_names, key=lambda b: abs(theirs.band(b).wavelength_nm - wavelength))
        if abs(theirs.band(nearest).wavelength_nm - wavelength) <= max_gap_nm:
            out.append((nearest, "nearest wavelength"))
        else:
            out.append((None, "none"))
    if all(b is None for b, _ in out):
        raise BandError(
            f"no {dataset_sensor} band matches the {sensor} bands {', '.join(names)} by name, colour "
            f"role or central wavelength (within {max_gap_nm:g} nm); evaluate this encoder on a "
            "dataset of its own bands"
        )
    return out
