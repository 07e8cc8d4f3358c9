"""rsmae.stats: known answers for the intervals, the paired tests and the verdict sentence."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from rsmae.stats import (
    PairedDifference,
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
    pairwise_verdicts,
    verdict,
    wilcoxon_signed_rank,
    wilson_interval,
)


def _table(only_a: int, only_b: int, both: int = 20, neither: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a), np.array(b)


def test_stats_imports_no_torch() -> None:
    code = "import sys, rsmae.stats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(("only_a", "only_b"), [(8, 2), (2, 8), (0, 6), (13, 4), (30, 41), (5, 5)])
def test_mcnemar_matches_the_binomial_formula(only_a: int, only_b: int) -> None:
    n, k = only_a + only_b, min(only_a, only_b)
    expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) * 0.5**n)
    res = mcnemar_exact(*_table(only_a, only_b))
    assert (res.only_a, res.only_b) == (only_a, only_b)
    assert res.p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_hand_table() -> None:
    # 8 vs 2 discordant images: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112 / 1024
    assert mcnemar_exact(*_table(8, 2)).p_value == pytest.approx(112 / 1024)
    assert mcnemar_exact(*_table(0, 0)).p_value == 1.0  # no discordant image
    with pytest.raises(ValueError, match="correctness"):
        mcnemar_exact([0, 2], [1, 1])


def test_paired_bootstrap_of_identical_predictions_is_zero() -> None:
    correct = np.random.default_rng(1).integers(0, 2, 270)
    res = paired_bootstrap(correct, correct)
    assert (res.difference, res.low, res.high) == (0.0, 0.0, 0.0)
    assert not res.excludes_zero
    assert verdict("A", "B", res).startswith("No clear difference between A and B: +0.0 points")


def test_a_large_real_difference_excludes_zero_and_is_called() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(270)
    a, b = truth < 0.8, truth < 0.5  # A right wherever B is, and on 30 % more images
    res = paired_bootstrap(a, b, rng=0)
    assert res.difference == pytest.approx(a.mean() - b.mean())
    assert 0 < res.low < res.difference < res.high
    text = verdict("A", "B", res, p_value=mcnemar_exact(a, b).p_value)
    assert text.startswith(f"A is higher than B by {100 * res.difference:.1f} points (paired 95 % CI")
    assert "over 270 images; McNemar p = " in text
    assert verdict("B", "A", paired_bootstrap(b, a)).startswith("B is lower than A")


def test_paired_bootstrap_is_fast_and_reproducible() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 270), rng.integers(0, 2, 270)
    start = time.perf_counter()
    res = paired_bootstrap(a, b, resamples=10_000, rng=7)
    assert time.perf_counter() - start < 1.0
    assert res == paired_bootstrap(a, b, resamples=10_000, rng=7)
    assert res.resamples == 10_000 and res.n == 270
    # the interval is about +-2 standard errors of the paired difference
    se = (a - b).std() / math.sqrt(270)
    assert res.high - res.low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_seeds_are_averaged_per_unit() -> None:
    a = np.array([[1, 0, 1, 1], [1, 1, 1, 0]])
    b = np.array([1, 0, 0, 0])
    res = paired_bootstrap(a, b)
    assert res.n == 4 and res.difference == pytest.approx(a.mean() - b.mean())
    with pytest.raises(ValueError, match="same units"):
        paired_bootstrap([1, 0, 1], [1, 0])


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_bootstrap_interval_of_one_accuracy() -> None:
    assert bootstrap_interval(np.ones(54)) == (1.0, 1.0)
    correct = np.r_[np.ones(189), np.zeros(81)]  # 70 % of 270
    low, high = bootstrap_interval(correct)
    w_low, w_high = wilson_interval(189, 270)
    assert low == pytest.approx(w_low, abs=0.01) and high == pytest.approx(w_high, abs=0.01)


def test_wilcoxon_matches_scipys_documented_example() -> None:
    # scipy.stats.wilcoxon docs: these 15 differences give statistic 24 (W-) and p = 0.041259765625
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75])
    res = wilcoxon_signed_rank(d, np.zeros_like(d))
    assert res.n == 15 and res.statistic == 120 - 24
    assert res.p_value == pytest.approx(0.041259765625, rel=1e-12)


def test_wilcoxon_with_ties_and_zeros_matches_enumeration() -> None:
    a = np.array([0.61, 0.55, 0.70, 0.42, 0.58, 0.66, 0.50, 0.47])
    b = np.array([0.51, 0.55, 0.60, 0.47, 0.48, 0.56, 0.52, 0.49])  # one zero, ties in |d|
    d = np.round(a - b, 10)
    d = d[d != 0]
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    for v in np.unique(np.abs(d)):  # mid-ranks
        ranks[np.abs(d) == v] = ranks[np.abs(d) == v].mean()
    observed = ranks[d > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in
            itertools.product([0, 1], repeat=d.size)]
    tail = min(np.mean([s <= observed + 1e-9 for s in sums]), np.mean([s >= observed - 1e-9 for s in sums]))
    res = wilcoxon_signed_rank(np.round(a, 10), np.round(b, 10))
    assert res.n == 7 and res.statistic == pytest.approx(observed)
    assert res.p_value == pytest.approx(min(1.0, 2 * tail))
    assert wilcoxon_signed_rank(a, a).p_value == 1.0


def test_verdict_decides_on_the_interval_only() -> None:
    inside = PairedDifference(0.05, -0.01, 0.11, 54, 0.95, 10_000)
    assert verdict("MAE", "random", inside, p_value=0.03).startswith("No clear difference")
    below = PairedDifference(-0.12, -0.2, -0.04, 10, 0.95, 10_000)
    assert verdict("MAE", "random", below, scale=100, unit="F1 points", units="cities",
                   test="Wilcoxon", p_value=0.02) == (
        "MAE is lower than random by 12.0 F1 points (paired 95 % CI -20.0 to -4.0 over 10 cities; "
        "Wilcoxon p = 0.02).")


def test_pairwise_verdicts_widen_every_interval_for_the_number_of_pairs() -> None:
    a, b = _table(only_a=16, only_b=5, both=100, neither=60)  # A ahead by 11 images of 181
    alone = paired_bootstrap(a, b)
    assert alone.excludes_zero  # called at 95 % as one comparison
    level, said = pairwise_verdicts({"A": a, "B": b, "C": b.copy(), "D": b.copy(), "E": b.copy()})
    assert level == pytest.approx(0.995) and len(said) == 10  # 10 pairs, each at 99.5 %
    assert said[0].startswith("No clear difference between A and B: +6.1 points (paired 99.5 % CI")
    assert said[0].endswith(f"McNemar p = {mcnemar_exact(a, b).p_value:.2g}).")
    assert "between B and C: +0.0 points" in said[4]
    assert pairwise_verdicts({"A": a}) == (0.95, [])
    _, (plain,) = pairwise_verdicts({"A": a, "B": b}, test=None)
    assert plain.endswith("over 181 images).") and "p =" not in plain
    with pytest.raises(ValueError, match="give 'mcnemar', 'wilcoxon' or None"):
        pairwise_verdicts({"A": a, "B": b}, test="t")
