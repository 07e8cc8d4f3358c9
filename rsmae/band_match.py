"""Pair the bands of two band lists by name: which source band gives each destination band.

Pure band logic on :mod:`rsmae.bands` (no torch), used by the weight adaptation of
:mod:`rsmae.models.adapt` and by the datasets that pick a backbone's bands from a sensor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rsmae.bands import SENSORS, Sensor, get_sensor
from rsmae.errors import BandError

__all__ = ["BandMatch", "match_bands"]


@dataclass(frozen=True)
class BandMatch:
    """How destination bands take their patch kernels from source bands.

    Attributes:
        src_sensor: Sensor of the source bands.
        src: Canonical source band names, in the checkpoint's channel order.
        dst_sensor: Sensor of the destination bands.
        dst: Canonical destination band names, in the model's channel order.
        pairs: Destination channel index -> source channel index for every copied band.
    """

    src_sensor: Sensor
    src: tuple[str, ...]
    dst_sensor: Sensor
    dst: tuple[str, ...]
    pairs: dict[int, int]

    @property
    def identity(self) -> bool:
        """True when source and destination are the same bands in the same order."""
        return self.src_sensor.name == self.dst_sensor.name and self.src == self.dst

    @property
    def same_bands(self) -> bool:
        """True when every destination band is one of the source bands (not a stand-in)."""
        src = [self.src_sensor.band(n) for n in self.src]
        return all(
            j in self.pairs and src[self.pairs[j]] == self.dst_sensor.band(name)
            for j, name in enumerate(self.dst)
        )


def _resolve(bands: Sequence[str], sensor: str | None, prefer: str | None) -> tuple[Sensor, tuple[str, ...]]:
    """Canonical names of ``bands`` in ``sensor``, else in the first sensor knowing them all."""
    if sensor is not None:
        found = get_sensor(sensor)
        return found, found.resolve(bands)
    order = ([prefer] if prefer else []) + [s for s in SENSORS if s != prefer]
    for name in order:
        try:
            return SENSORS[name], SENSORS[name].resolve(bands)
        except BandError:
            continue
    raise BandError(
        f"bands {list(bands)} do not all belong to one registered sensor; pass the sensor "
        f"(one of {', '.join(SENSORS)}) and band names it knows"
    )


def match_bands(
    src_bands: Sequence[str],
    dst_bands: Sequence[str],
    *,
    src_sensor: str | None = None,
    dst_sensor: str | None = None,
) -> BandMatch:
    """Pair destination bands with source bands by name.

    A destination band takes the kernel of the *same* band (same registry entry, so
    ``"B8A"``/``"B08A"`` match and Sentinel-2 L1C/L2A bands match each other). Across different
    sensors the true-colour roles are paired as well: the red, green and blue bands of the source
    sensor (``R, G, B`` for ``"rgb"``) give the red, green and blue bands of the destination
    (``B04, B03, B02`` for Sentinel-2).

    Args:
        src_bands: Bands of the checkpoint, in channel order.
        dst_bands: Bands of the model, in channel order.
        src_sensor: Sensor of ``src_bands``; inferred (preferring ``dst_sensor``) when ``None``.
        dst_sensor: Sensor of ``dst_bands``; inferred (preferring the source's) when ``None``.

    Returns:
        The :class:`BandMatch`.

    Raises:
        BandError: on unknown or repeated bands, or when no destination band can be paired.
    """
    s_sensor, src = _resolve(src_bands, src_sensor, dst_sensor)
    d_sensor, dst = _resolve(dst_bands, dst_sensor, s_sensor.name)
    src_objs = [s_sensor.band(n) for n in src]
    dst_objs = [d_sensor.band(n) for n in dst]
    pairs = {j: src_objs.index(b) for j, b in enumerate(dst_objs) if b in src_objs}
    if s_sensor.name != d_sensor.name:
        for s_name, d_name in zip(s_sensor.rgb, d_sensor.rgb, strict=True):
            if s_name in src and d_name in dst:
                j, i = dst.index(d_name), src.index(s_name)
                if j not in pairs and i not in pairs.values():
                    pairs[j] = i
    if not pairs:
        raise BandError(
            f"no band of the model ({', '.join(dst)}, sensor {d_sensor.name!r}) is in the weights "
            f"({', '.join(src)}, sensor {s_sensor.name!r}) and no red/green/blue pairing exists; "
            "choose bands that share at least one band with the weights"
        )
    return BandMatch(s_sensor, src, d_sensor, dst, pairs)
