"""Flatness as the loss increase under filter-normalised Gaussian weight noise.

Draw ``k`` is a filter-normalised Gaussian direction ``d_k`` (every filter of ``d_k`` has the norm
of the model's filter, :func:`~rsmae.landscape.directions.random_direction`); at noise level
``sigma`` the weights are ``theta + sigma * d_k``, i.e. each filter gets Gaussian noise of
``sigma`` times its own norm. The same draws serve every ``sigma`` (common random numbers), so the
curves are smooth in ``sigma``. The points (draws x sigmas) run ``chunk_size`` at a time through one
batched evaluation (:func:`~rsmae.landscape.surface.batched_losses`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsmae.errors import LandscapeError
from rsmae.landscape.directions import random_direction
from rsmae.landscape.objectives import Objective
from rsmae.landscape.surface import batched_losses

__all__ = ["NoiseResult", "noise_flatness"]


@dataclass
class NoiseResult:
    """Loss increase ``L(theta + sigma d_k) - L(theta)`` per noise level and draw.

    Attributes:
        base: ``L(theta)``.
        sigmas: Noise levels.
        increases: ``(len(sigmas), draws)`` loss increases.
        seed: Seed of the first draw (draw ``k`` uses ``seed + k``).
        include_1d: Whether 1-D parameters were perturbed.
    """

    base: float
    sigmas: list[float]
    increases: np.ndarray
    seed: int
    include_1d: bool

    @property
    def mean(self) -> np.ndarray:
        """Mean increase per sigma."""
        return self.increases.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over draws per sigma (ddof 1 when there are several draws)."""
        return self.increases.std(axis=1, ddof=1 if self.increases.shape[1] > 1 else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with the means and standard deviations."""
        d = asdict(self)
        d["increases"] = self.increases.tolist()
        d["mean"] = self.mean.tolist()
        d["std"] = self.std.tolist()
        return d


def noise_flatness(
    objective: Objective,
    sigmas: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    *,
    draws: int = 20,
    seed: int = 0,
    include_1d: bool = False,
    centre: Mapping[str, Tensor] | None = None,
    chunk_size: int = 8,
    use_vmap: bool = True,
) -> NoiseResult:
    """Mean and spread of the loss increase under filter-normalised Gaussian noise.

    Args:
        objective: The loss.
        sigmas: Noise levels (relative to every filter's norm); 0 gives the base loss.
        draws: Noise draws per level (the same draws for every level).
        seed: Draw ``k`` is ``random_direction(params, seed + k)``.
        include_1d: Perturb biases and norm parameters too.
        centre: Weights (default ``objective.params``).
        chunk_size: Points per batched forward.
        use_vmap: Batch points with ``vmap``.
    """
    if draws < 1 or not len(sigmas):
        raise LandscapeError(f"draws={draws}, sigmas={list(sigmas)}: need at least one of each")
    if any(s < 0 for s in sigmas):
        raise LandscapeError(f"sigmas {list(sigmas)} must be >= 0")
    centre = objective.params if centre is None else centre
    base = float(objective.many({n: t[None] for n, t in centre.items()}, use_vmap=False)[0])
    increases = np.zeros((len(sigmas), draws))
    per_chunk = max(1, chunk_size // len(sigmas))  # draws per batched forward, all sigmas of each
    batched = use_vmap and chunk_size > 1
    for start in range(0, draws, per_chunk):
        ks = range(start, min(draws, start + per_chunk))
        dirs = [random_direction(centre, seed + k, include_1d=include_1d) for k in ks]
        points = {n: torch.stack([t + float(s) * d[n] for d in dirs for s in sigmas])
                  for n, t in centre.items()}
        losses, batched = batched_losses(objective, points, use_vmap=batched)
        values = losses.double().cpu().numpy().reshape(len(ks), len(sigmas))
        increases[:, ks.start : ks.stop] = values.T - base
    return NoiseResult(base, [float(s) for s in sigmas], increases, int(seed), include_1d)
