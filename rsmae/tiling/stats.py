"""Per-band statistics, streamed per unit of work and merged exactly.

Integer data (uint8, uint16, int16) is summarised by a full histogram per band (256 or 65536
bins): a sufficient statistic, so mean, std and percentiles are exact and independent of how the
work was split. Float data keeps count, sum and sum of squares in float64 (merged in unit order, so
the result does not depend on the number of workers) and a histogram over the top 16 bits of the
order-preserving float32 key, which places percentiles within 1/128 of their value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accumulate", "hist_offset", "summarise"]


def hist_offset(dtype: str) -> int:
    """Offset added to integer values before binning (int16 -> 0..65535)."""
    return 32768 if np.dtype(dtype) == np.int16 else 0


def _float_key(values: np.ndarray) -> np.ndarray:
    """Top 16 bits of the order-preserving uint32 key of float32 values."""
    bits = values.astype(np.float32).view(np.uint32)
    key = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return (key >> 16).astype(np.int64)


def _key_to_float(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float_key` at the lower edge of a bucket."""
    full = key.astype(np.uint32) << np.uint32(16)
    bits = np.where(full >> np.uint32(31), full & np.uint32(0x7FFFFFFF), ~full).astype(np.uint32)
    with np.errstate(invalid="ignore"):  # buckets of NaN bit patterns hold no valid pixel
        return bits.view(np.float32).astype(np.float64)


def accumulate(
    tiles: np.ndarray, valid: np.ndarray, bins: int, hist: np.ndarray, moments: np.ndarray
) -> None:
    """Add the valid pixels of ``tiles`` to ``hist`` (and, for float data, ``moments``) in place.

    Integer data needs no moments: the histogram gives them exactly.

    Args:
        tiles: ``(k, C, T, T)`` pixels.
        valid: ``(k, T, T)`` boolean mask of valid pixels.
        bins: Histogram bins.
        hist: ``(C, bins)`` int64 histogram.
        moments: ``(C, 3)`` float64 count, sum, sum of squares (float data only).
    """
    if not len(tiles):
        return
    is_float = tiles.dtype.kind == "f"
    offset = hist_offset(str(tiles.dtype))
    everything = bool(valid.all())
    for c in range(tiles.shape[1]):
        band = tiles[:, c] if everything else tiles[:, c][valid]
        band = band.reshape(-1)
        if is_float:
            hist[c] += np.bincount(_float_key(band), minlength=bins)[:bins]
            as64 = band.astype(np.float64)
            moments[c] += (band.size, as64.sum(), np.dot(as64, as64))
        elif offset:
            hist[c] += np.bincount(band.astype(np.int64) + offset, minlength=bins)
        else:
            hist[c] += np.bincount(band, minlength=bins)


def _quantile(hist: np.ndarray, q: float, values: np.ndarray) -> float:
    """NumPy-'linear' quantile of the data whose histogram over ``values`` is ``hist``."""
    n = int(hist.sum())
    pos = q * (n - 1)
    lo, frac = int(np.floor(pos)), pos - np.floor(pos)
    cum = np.cumsum(hist)
    v_lo = values[np.searchsorted(cum, lo + 1)]
    v_hi = values[np.searchsorted(cum, min(lo + 1, n - 1) + 1)]
    return float(v_lo + (v_hi - v_lo) * frac)


def summarise(hist: np.ndarray, moments: np.ndarray, dtype: str) -> list[dict[str, float]]:
    """Mean, std, min, max, 1st and 99th percentile and count per band.

    Integer data is computed exactly from the histogram (Python integers, no rounding until
    the final division); float data from the moments and the key histogram.
    """
    out = []
    is_float = np.dtype(dtype).kind == "f"
    offset = hist_offset(dtype)
    for c in range(hist.shape[0]):
        h = hist[c]
        nz = np.nonzero(h)[0]
        if not len(nz):
            out.append({"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0,
                        "p01": 0.0, "p99": 0.0})
            continue
        if is_float:
            values = _key_to_float(np.arange(len(h)))
            count, total, sq = moments[c]
            mean = total / count
            var = max(sq / count - mean * mean, 0.0)
        else:
            values = np.arange(len(h), dtype=np.float64) - offset
            count = sum(int(x) for x in h[nz])
            vals = [int(v) - offset for v in nz]
            total = sum(v * int(n) for v, n in zip(vals, h[nz], strict=True))
            sq = sum(v * v * int(n) for v, n in zip(vals, h[nz], strict=True))
            mean = total / count
            var = (sq * count - total * total) / (count * count)
        out.append({
            "count": int(count), "mean": float(mean), "std": float(np.sqrt(var)),
            "min": float(values[nz[0]]), "max": float(values[nz[-1]]),
            "p01": _quantile(h, 0.01, values), "p99": _quantile(h, 0.99, values),
        })
    return out
