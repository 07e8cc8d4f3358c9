"""Stratified k-fold splits and choices made inside a training fold (inner cross-validation).

Small labelled sets are scored by stratified k-fold over all labelled images: every image is tested
exactly once per fold seed, and every choice (L2 weight, pooling, learning rate, threshold) is made
on the training fold alone, by inner folds of it (METHOD.md, "Statistics of the tables"). numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Fold", "choose_by_inner_cv", "fixed_split", "stratified_kfold"]

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Fold:
    """One train/test split of a labelled set, as indices into it.

    Attributes:
        name: ``"fold0"`` ... ``"fold{k-1}"``, or ``"fixed"`` for the dataset's own split.
        train: Sorted indices of the training images.
        test: Sorted indices of the test images.
    """

    name: str
    train: np.ndarray
    test: np.ndarray


def stratified_kfold(labels: ArrayLike, k: int = 5, *, seed: int = 0) -> list[Fold]:
    """Split into ``k`` folds that keep every class's share and test every image exactly once.

    Each class's images are shuffled (``seed``) and the classes laid end to end; position ``i`` of
    that list goes to test fold ``i % k``. So every class spreads over the folds as evenly as its
    count allows (``n // k`` or ``n // k + 1`` per fold) and fold sizes differ by at most one.

    Args:
        labels: ``(N,)`` class labels (any sortable values).
        k: Number of folds (at least 2).
        seed: Shuffling seed; the same seed gives the same folds.

    Returns:
        ``k`` folds; their test sets partition ``range(N)``.

    Raises:
        ValueError: when ``k < 2`` or some class has fewer than ``k`` images.
    """
    y = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k={k}: k-fold needs at least 2 folds")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        small = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < k}
        raise ValueError(f"classes {small} have fewer images than the {k} folds; use fewer folds")
    gen = np.random.default_rng(seed)
    order = np.concatenate([gen.permutation(np.flatnonzero(y == c)) for c in classes])
    fold_of = np.empty(y.size, dtype=int)
    fold_of[order] = np.arange(y.size) % k
    return [Fold(f"fold{i}", np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(k)]


def fixed_split(n_train: int, n_test: int) -> Fold:
    """The dataset's own split, for images stacked as its training images then its test images."""
    return Fold("fixed", np.arange(n_train), np.arange(n_train, n_train + n_test))


def choose_by_inner_cv(
    labels: ArrayLike,
    candidates: Sequence[C],
    fit_predict: Callable[[np.ndarray, np.ndarray, C], ArrayLike],
    *,
    k: int = 5,
    seed: int = 0,
) -> tuple[C, list[float]]:
    """Choose among ``candidates`` by stratified inner k-fold accuracy on a training fold only.

    Args:
        labels: ``(N,)`` labels of the training fold (the only images this sees).
        candidates: Settings to compare; on equal accuracy the earliest wins, so list the simplest
            (most regularised) first.
        fit_predict: ``fit_predict(train, test, candidate)`` fits on the training fold's images
            ``train`` (indices into ``labels``) and returns predicted labels of ``test``.
        k: Inner folds (fewer when a class of the training fold has fewer images).
        seed: Inner fold seed.

    Returns:
        The chosen candidate and every candidate's inner accuracy (pooled over inner test images).

    Raises:
        ValueError: when ``candidates`` is empty.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    y = np.asarray(labels)
    k = min(k, int(np.unique(y, return_counts=True)[1].min()))
    folds = stratified_kfold(y, k, seed=seed)
    scores = []
    for candidate in candidates:
        correct = sum(int((np.asarray(fit_predict(f.train, f.test, candidate)) == y[f.test]).sum())
                      for f in folds)
        scores.append(correct / y.size)
    return candidates[int(np.argmax(scores))], scores
