"""Directions in weight space: seeded Gaussian draws, filter normalisation, model-to-model lines.

Weights are plain dicts ``name -> tensor`` (:data:`ParamDict`), the names of
``model.named_parameters()``. Only *trainable* parameters (``requires_grad``) belong to them, so a
fixed sin-cos ``pos_embed`` or an RC-MAE teacher is never perturbed.

Filter normalisation (Li et al. 2018): every filter of a direction (a row of a weight matrix, an
output channel of a convolution: index 0 of any tensor with two or more dimensions) is rescaled to
the norm of the same filter in the model, so a step of 1 along the direction moves every filter by
its own size and surfaces of differently scaled models are comparable. One-dimensional parameters
(biases, LayerNorm scales) get a zero direction by default; with ``include_1d=True`` each is
rescaled as one filter.

Draws are seeded per tensor from ``(seed, name)``, so the same seed gives the same draw for a
parameter name whatever else the dict holds: the encoder part of an MAE direction equals the
direction of the probe objective, whose weights are the same ``encoder.*`` names.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rsmae.errors import LandscapeError

__all__ = [
    "ParamDict",
    "add_directions",
    "direction_norms",
    "filter_normalize",
    "fingerprint",
    "model_direction",
    "random_direction",
    "stack_points",
    "trainable_params",
]

ParamDict = dict[str, Tensor]


def trainable_params(model: nn.Module) -> ParamDict:
    """The trainable parameters of ``model`` (``requires_grad``), detached, in module order.

    Frozen parameters (a fixed position table, an EMA teacher) are left out, so directions built
    from this dict never perturb them.
    """
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator keyed by ``(seed, name)``, independent of the order of the parameters."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_direction(
    params: Mapping[str, Tensor],
    seed: int,
    *,
    normalize: bool = True,
    include_1d: bool = False,
) -> ParamDict:
    """A Gaussian direction with the shapes of ``params``, filter-normalised by default.

    Args:
        params: The centre weights (see :func:`trainable_params`).
        seed: Seed of the draw; each tensor is drawn on the CPU in float32 from its own generator
            keyed by ``(seed, name)`` (the same on every device), then cast to the tensor's dtype
            and device.
        normalize: Apply :func:`filter_normalize`.
        include_1d: Perturb one-dimensional parameters too (default: zero direction for them).

    Returns:
        ``name -> tensor`` like ``params``.
    """
    direction = {}
    for name, p in params.items():
        draw = torch.randn(tuple(p.shape), generator=_generator(seed, name), dtype=torch.float32)
        direction[name] = draw.to(device=p.device, dtype=p.dtype)
    if normalize:
        return filter_normalize(direction, params, include_1d=include_1d)
    if not include_1d:
        direction = {n: torch.zeros_like(d) if d.ndim <= 1 else d for n, d in direction.items()}
    return direction


def _check_keys(a: Mapping[str, Tensor], b: Mapping[str, Tensor], what: str) -> None:
    if set(a) != set(b):
        extra, missing = sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5]
        raise LandscapeError(
            f"{what}: parameter names differ (only in the first: {extra}, only in the second: "
            f"{missing}); build both from the same architecture with trainable_params()"
        )
    for name in a:
        if a[name].shape != b[name].shape:
            raise LandscapeError(
                f"{what}: {name} has shape {tuple(a[name].shape)} vs {tuple(b[name].shape)}; "
                "the models must share their architecture"
            )


def filter_normalize(
    direction: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    *,
    include_1d: bool = False,
    eps: float = 1e-10,
) -> ParamDict:
    """Rescale every filter of ``direction`` to the norm of the same filter of ``params``.

    Args:
        direction: ``name -> tensor`` with the shapes of ``params``.
        params: The centre weights.
        include_1d: Rescale one-dimensional tensors as one filter each (default: zero them).
        eps: Added to the direction's filter norms (a zero filter stays zero).

    Returns:
        A new dict; ``params`` and ``direction`` are not modified.

    Raises:
        LandscapeError: when names or shapes differ.
    """
    _check_keys(direction, params, "filter_normalize(direction, params)")
    out = {}
    for name, d in direction.items():
        theta = params[name]
        if d.ndim <= 1 and not include_1d:
            out[name] = torch.zeros_like(d)
            continue
        dims = tuple(range(1, d.ndim))
        if d.ndim <= 1:  # one filter: the whole vector
            out[name] = d * (theta.norm() / (d.norm() + eps))
            continue
        norm = torch.linalg.vector_norm
        scale = norm(theta, dim=dims, keepdim=True) / (norm(d, dim=dims, keepdim=True) + eps)
        out[name] = d * scale
    return out


def model_direction(params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor]) -> ParamDict:
    """``theta_b - theta_a`` for every parameter: the straight line from model a (0) to b (1).

    One-dimensional parameters are included (the line must reach ``b`` exactly); no normalisation.

    Raises:
        LandscapeError: when the two models' parameter names or shapes differ.
    """
    _check_keys(params_a, params_b, "model_direction(a, b)")
    return {n: params_b[n].to(params_a[n]) - params_a[n] for n in params_a}


def add_directions(
    params: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], coefs: Sequence[float]
) -> ParamDict:
    """``theta + sum_i coefs[i] * d_i`` (one point)."""
    if len(directions) != len(coefs):
        raise LandscapeError(f"{len(directions)} directions but {len(coefs)} coefficients")
    out = {}
    for name, theta in params.items():
        value = theta.clone()
        for d, c in zip(directions, coefs, strict=True):
            if c:
                value.add_(d[name], alpha=float(c))
        out[name] = value
    return out


def stack_points(params: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                 coefs: Tensor) -> ParamDict:
    """Weights of ``K`` points at once: ``out[name][k] = theta + sum_i coefs[k, i] * d_i``.

    Args:
        params: Centre weights.
        directions: ``m`` directions.
        coefs: ``(K, m)`` coefficients.

    Returns:
        ``name -> (K, *shape)`` tensors, ready for ``torch.func.vmap``.
    """
    if coefs.ndim != 2 or coefs.shape[1] != len(directions):
        raise LandscapeError(f"coefs must be (K, {len(directions)}), got {tuple(coefs.shape)}")
    out = {}
    cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    for name, theta in params.items():
        key = (theta.device, theta.dtype)
        if key not in cast:
            cast[key] = coefs.to(device=theta.device, dtype=theta.dtype)
        c = cast[key]
        row = theta.reshape(1, -1)
        if not directions:
            out[name] = row.expand(c.shape[0], -1).clone().view(c.shape[0], *theta.shape)
            continue
        flat = torch.addmm(row, c[:, :1], directions[0][name].reshape(1, -1))  # written once, no clone
        for i, d in enumerate(directions[1:], 1):
            flat.addmm_(c[:, i : i + 1], d[name].reshape(1, -1))
        out[name] = flat.view(c.shape[0], *theta.shape)
    return out


def direction_norms(direction: Mapping[str, Tensor]) -> dict[str, float]:
    """Norm of every tensor of a direction (for logs and reports)."""
    return {name: float(d.norm()) for name, d in direction.items()}


def fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-1 of names, shapes, dtypes and values: identifies weights or a direction in cache keys."""
    h = hashlib.sha1()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
