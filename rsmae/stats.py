"""Statistics of the tables: intervals of one score, paired comparisons, and the verdict sentence.

Pure numpy and the standard library (no torch, no scipy), so a report can import it without the
model stack. METHOD.md, "Statistics of the tables":

- one accuracy: :func:`wilson_interval` (binomial, n images) or :func:`bootstrap_interval`;
- two methods scored on the same units (images, or cities for change detection):
  :func:`paired_bootstrap` (resample units, recompute both means, percentile interval of the
  difference), :func:`mcnemar_exact` (exact binomial test on the discordant images) and
  :func:`wilcoxon_signed_rank` (exact sign-flip distribution of the signed ranks, for per-city scores);
- :func:`verdict`: a difference is called only when the paired interval excludes 0;
  :func:`pairwise_verdicts` does it for every pair of several methods with Bonferroni-widened
  intervals, so that all of them hold together at the family's coverage.

Seeds: per-unit scores may be given as ``(seeds, units)``; they are averaged over seeds per unit
before resampling units, so the intervals cover test-set sampling, not seed-to-seed training noise.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "McNemar",
    "PairedDifference",
    "SignedRank",
    "bootstrap_interval",
    "mcnemar_exact",
    "paired_bootstrap",
    "pairwise_verdicts",
    "verdict",
    "wilcoxon_signed_rank",
    "wilson_interval",
]

Rng = np.random.Generator | int


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over paired units with its paired-bootstrap percentile interval.

    Attributes:
        difference: Observed mean of ``a`` minus mean of ``b``.
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of paired units (images, cities).
        confidence: Coverage of the interval, e.g. 0.95.
        resamples: Bootstrap resamples.
    """

    difference: float
    low: float
    high: float
    n: int
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or entirely below 0."""
        return self.low > 0 or self.high < 0


@dataclasses.dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired right/wrong outcomes.

    Attributes:
        only_a: Units ``a`` got right and ``b`` wrong.
        only_b: Units ``b`` got right and ``a`` wrong.
        p_value: Two-sided exact binomial p-value of ``only_a`` among the discordant units (p = 1/2).
    """

    only_a: int
    only_b: int
    p_value: float


@dataclasses.dataclass(frozen=True)
class SignedRank:
    """Wilcoxon signed-rank test of paired scores (exact, zero differences dropped).

    Attributes:
        statistic: Sum of the ranks of the positive differences ``a - b`` (W+).
        p_value: Two-sided exact p-value of W+ under random signs (ties: mid-ranks, still exact).
        n: Nonzero differences used.
    """

    statistic: float
    p_value: float
    n: int


def _scores(x: ArrayLike, name: str) -> np.ndarray:
    """Per-unit scores as float64 ``(units,)``; ``(seeds, units)`` is averaged over seeds first."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr.mean(axis=0)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: give per-unit scores of shape (units,) or (seeds, units), "
                         f"got shape {np.shape(x)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: scores must be finite")
    return arr


def _rng(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _bootstrap_means(values: np.ndarray, resamples: int, rng: Rng, chunk: int = 2000) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``values``, vectorised in chunks."""
    gen = _rng(rng)
    n = values.size
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = gen.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; give a coverage in (0, 1), e.g. 0.95")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def wilson_interval(correct: int, total: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (an accuracy of ``correct`` out of ``total`` images).

    Args:
        correct: Units scored right.
        total: Units scored.
        confidence: Coverage, e.g. 0.95.

    Returns:
        ``(low, high)`` in [0, 1].

    Raises:
        ValueError: when ``total`` is not positive or ``correct`` is outside ``[0, total]``.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"{correct} correct of {total}: need total > 0 and 0 <= correct <= total")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; give a coverage in (0, 1), e.g. 0.95")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends, not a rounding away from them
    return low, 1.0 if correct == total else min(1.0, centre + half)


def bootstrap_interval(scores: ArrayLike, *, resamples: int = 10_000, confidence: float = 0.95,
                       rng: Rng = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean score (e.g. accuracy from 0/1 per image).

    Args:
        scores: Per-unit scores ``(units,)`` or ``(seeds, units)``.
        resamples: Bootstrap resamples of the units.
        confidence: Coverage, e.g. 0.95.
        rng: Seed or generator (the result is reproducible for a given seed).

    Returns:
        ``(low, high)``.
    """
    values = _scores(scores, "scores")
    return _percentiles(_bootstrap_means(values, resamples, rng), confidence)


def paired_bootstrap(scores_a: ArrayLike, scores_b: ArrayLike, *, resamples: int = 10_000,
                     confidence: float = 0.95, rng: Rng = 0) -> PairedDifference:
    """Paired bootstrap of the difference of two mean scores on the same units.

    The same resampled units score both methods, so what the two share (easy and hard images, one
    city's difficulty) cancels: far tighter than two unpaired intervals.

    Args:
        scores_a: Per-unit scores of method A, ``(units,)`` or ``(seeds, units)`` (0/1 correctness for
            accuracy, F1 per city...).
        scores_b: Same units, same order, for method B.
        resamples: Bootstrap resamples (10,000 of 270 images take a few tens of milliseconds).
        confidence: Coverage, e.g. 0.95.
        rng: Seed or generator.

    Returns:
        The observed difference ``mean(a) - mean(b)`` and its percentile interval.

    Raises:
        ValueError: when the two do not score the same number of units.
    """
    a, b = _scores(scores_a, "scores_a"), _scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same units: {a.size} vs {b.size}")
    diff = a - b
    low, high = _percentiles(_bootstrap_means(diff, resamples, rng), confidence)
    return PairedDifference(float(diff.mean()), low, high, diff.size, confidence, resamples)


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemar:
    """McNemar's exact test: are the images only A gets right as common as those only B gets right?

    Two-sided exact binomial test of ``only_a`` out of ``only_a + only_b`` discordant images with
    p = 1/2 (the same p-value as ``scipy.stats.binomtest(only_a, n, 0.5).pvalue``).

    Args:
        correct_a: Per-image correctness of A (bool or 0/1), ``(images,)``.
        correct_b: Same images, same order, for B.

    Returns:
        Discordant counts and the p-value (1.0 when no image is discordant).

    Raises:
        ValueError: when the arrays differ in shape or are not 0/1.
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired correctness must be 1-D of one length: {a.shape} vs {b.shape}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar's test takes per-image correctness (bool or 0/1)")
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # exact integers, one rounding
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    ranks = np.empty(values.size)
    start = 0
    for stop in range(1, values.size + 1):
        if stop == values.size or sorted_vals[stop] != sorted_vals[start]:
            ranks[order[start:stop]] = (start + 1 + stop) / 2
            start = stop
    return ranks


def wilcoxon_signed_rank(scores_a: ArrayLike, scores_b: ArrayLike) -> SignedRank:
    """Wilcoxon signed-rank test of paired per-unit scores (e.g. F1 per city), exact.

    Zero differences are dropped (Wilcoxon's rule); tied absolute differences get mid-ranks. Under the
    null every sign is equally likely, so W+ is distributed as the sum of a random subset of the
    ranks: computed exactly by a convolution over the (doubled, integer) ranks, for any ``n``.

    Args:
        scores_a: Scores of method A per unit, ``(units,)`` or ``(seeds, units)``.
        scores_b: Same units, same order, for method B.

    Returns:
        W+, the two-sided p-value (1.0 when every difference is zero) and the units used.

    Raises:
        ValueError: when the two do not score the same number of units.
    """
    a, b = _scores(scores_a, "scores_a"), _scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same units: {a.size} vs {b.size}")
    diff = (a - b)[a != b]
    if diff.size == 0:
        return SignedRank(0.0, 1.0, 0)
    ranks = _midranks(np.abs(diff))
    doubled = np.rint(2 * ranks).astype(int)  # mid-ranks are halves: doubled they are integers
    dist = np.zeros(int(doubled.sum()) + 1)
    dist[0] = 1.0
    for r in doubled:  # each rank (>= 2 when doubled) enters W+ with probability 1/2
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: dist.size - r]
        dist = 0.5 * (dist + shifted)
    w_plus = int(doubled[diff > 0].sum())
    lower, upper = dist[: w_plus + 1].sum(), dist[w_plus:].sum()
    return SignedRank(w_plus / 2, float(min(1.0, 2 * min(lower, upper))), int(diff.size))


def verdict(name_a: str, name_b: str, diff: PairedDifference, *, scale: float = 100.0,
            unit: str = "points", units: str = "images", p_value: float | None = None,
            test: str = "McNemar") -> str:
    """One sentence on A vs B: a difference is called only when the paired interval excludes 0.

    Args:
        name_a: Name of method A (the difference is A minus B).
        name_b: Name of method B.
        diff: The paired bootstrap result.
        scale: Multiplier for display (100: accuracy in points).
        unit: Unit of the scaled difference.
        units: What was resampled (images, cities).
        p_value: A paired test's p-value to quote beside the interval (it does not decide).
        test: Name of that test.

    Returns:
        e.g. ``"A is higher than B by 5.2 points (paired 95 % CI 1.1 to 9.3 over 270 images;
        McNemar p = 0.012)."`` or ``"No clear difference between A and B: +1.1 points (...)."``.
    """
    d, lo, hi = (scale * v for v in (diff.difference, diff.low, diff.high))
    level = f"{100 * diff.confidence:.3g} %"
    extra = f"; {test} p = {p_value:.2g}" if p_value is not None else ""
    if diff.excludes_zero:
        word = "higher" if diff.low > 0 else "lower"
        return (f"{name_a} is {word} than {name_b} by {abs(d):.1f} {unit} (paired {level} CI "
                f"{lo:+.1f} to {hi:+.1f} over {diff.n} {units}{extra}).")
    return (f"No clear difference between {name_a} and {name_b}: {d:+.1f} {unit} (paired {level} CI "
            f"{lo:+.1f} to {hi:+.1f} over {diff.n} {units}{extra}).")


def pairwise_verdicts(scores: dict[str, ArrayLike], *, family: float = 0.95, rng: Rng = 0,
                      test: str | None = "mcnemar", scale: float = 100.0, unit: str = "points",
                      units: str = "images") -> tuple[float, list[str]]:
    """A verdict for every pair of methods scored on the same units, all intervals holding together.

    With m pairs each interval is at ``1 - (1 - family) / m`` (Bonferroni): ten pairs at 95 % each
    would call a difference in one table out of two by chance alone. The paired test's p (unadjusted)
    is quoted beside each interval; it does not decide.

    Args:
        scores: ``name -> score per unit`` aligned across the methods (insertion order gives the pairs'
            order, A minus B): 0/1 correctness per image for ``"mcnemar"``, e.g. F1 per city for
            ``"wilcoxon"``.
        family: Coverage of all the intervals together.
        rng: Seed or generator of the bootstrap.
        test: ``"mcnemar"`` (:func:`mcnemar_exact`), ``"wilcoxon"`` (:func:`wilcoxon_signed_rank`) or
            ``None`` (no p quoted: e.g. scores averaged over seeds or fold partitions).
        scale: Multiplier for display (100: accuracy in points; 1: F1 already in points).
        unit: Unit of the scaled difference.
        units: What was resampled (images, cities).

    Returns:
        The per-interval coverage and one sentence per pair (none for fewer than two methods).
    """
    if test not in ("mcnemar", "wilcoxon", None):
        raise ValueError(f"test={test!r}; give 'mcnemar', 'wilcoxon' or None")
    names = list(scores)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if not pairs:
        return family, []
    level = 1 - (1 - family) / len(pairs)
    out = []
    for a, b in pairs:
        if test is None:
            p, name = None, ""
        elif test == "mcnemar":
            p, name = mcnemar_exact(scores[a], scores[b]).p_value, "McNemar"
        else:
            signed = wilcoxon_signed_rank(scores[a], scores[b])
            p, name = (signed.p_value if signed.n else None), "Wilcoxon signed-rank"
        diff = paired_bootstrap(scores[a], scores[b], confidence=level, rng=rng)
        out.append(verdict(a, b, diff, scale=scale, unit=unit, units=units, p_value=p, test=name))
    return level, out
