"""Curvature at the centre: Hessian-vector products, top eigenvalues, Hutchinson trace.

Hessian-vector products come from double backward: the gradient graph is built once
(``create_graph=True``) and every product is a vector-Jacobian product of the gradient with the
vector, so an HVP costs one extra backward, not a fresh forward. Objectives evaluate their model
with timm's math attention (:func:`~rsmae.models.set_fused_attention`), because the fused SDPA
kernels have no double backward.

The Hessian is taken with respect to every weight of the objective (its trainable parameters);
vectors are ``name -> tensor`` dicts like the weights. All randomness comes from seeded
generators.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from rsmae.errors import LandscapeError
from rsmae.landscape.directions import ParamDict
from rsmae.landscape.objectives import Objective

__all__ = ["EigenResult", "HessianOperator", "TraceResult", "hutchinson_trace", "top_eigenvalues"]

_logger = logging.getLogger(__name__)


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def _norm(a: Mapping[str, Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def _axpy(alpha: float, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> ParamDict:
    """``y + alpha * x``."""
    return {n: y[n] + alpha * x[n] for n in y}


def _scale(a: Mapping[str, Tensor], alpha: float) -> ParamDict:
    return {n: t * alpha for n, t in a.items()}


class HessianOperator:
    """``H v`` at fixed weights by double backward; the gradient graph is built once and kept.

    Args:
        objective: The loss.
        centre: Weights at which to take the Hessian (default ``objective.params``).

    Attributes:
        loss: Loss value at the centre.
        calls: Number of products computed.
    """

    def __init__(self, objective: Objective, centre: Mapping[str, Tensor] | None = None) -> None:
        centre = objective.params if centre is None else centre
        self.names = list(centre)
        self.inputs = [centre[n].detach().clone().requires_grad_(True) for n in self.names]
        self._threads = objective.threads
        with torch.enable_grad(), self._threads(4):  # forward + double backward: ~4 forwards of work
            loss = objective(dict(zip(self.names, self.inputs, strict=True)))
            grads = torch.autograd.grad(loss, self.inputs, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not self._live:
            raise LandscapeError(f"the {objective.name} loss has no curvature in its weights (linear "
                                 "or constant); nothing to take a Hessian of")
        self._grads = [grads[i] for i in self._live]
        self.calls = 0

    def like(self, fill: str, generator: torch.Generator) -> ParamDict:
        """A random vector with the weights' shapes: ``"gaussian"`` or ``"rademacher"`` (+-1)."""
        out = {}
        for name, p in zip(self.names, self.inputs, strict=True):
            if fill == "rademacher":
                v = torch.randint(0, 2, tuple(p.shape), generator=generator).to(torch.float32) * 2 - 1
            else:
                v = torch.randn(tuple(p.shape), generator=generator)
            out[name] = v.to(device=p.device, dtype=p.dtype)
        return out

    def __call__(self, v: Mapping[str, Tensor]) -> ParamDict:
        """``H v`` as ``name -> tensor``."""
        outputs = [v[self.names[i]].to(self.inputs[i]) for i in self._live]
        with self._threads(4):
            hv = torch.autograd.grad(self._grads, self.inputs, grad_outputs=outputs, retain_graph=True,
                                     allow_unused=True)
        self.calls += 1
        return {n: h.detach() if h is not None else torch.zeros_like(p)
                for n, h, p in zip(self.names, hv, self.inputs, strict=True)}


@dataclass
class EigenResult:
    """Top Hessian eigenvalues by power iteration with deflation.

    Attributes:
        values: Eigenvalues, largest magnitude first.
        history: Per eigenvalue, the Rayleigh-quotient estimate after every iteration.
        converged: Per eigenvalue, whether the relative change fell below the tolerance.
        hvps: Hessian-vector products used.
        loss: Loss at the centre.
        vectors: Unit eigenvectors (not serialised).
    """

    values: list[float]
    history: list[list[float]]
    converged: list[bool]
    hvps: int
    loss: float
    vectors: list[ParamDict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (without the vectors)."""
        d = asdict(self)
        d.pop("vectors")
        return d


def top_eigenvalues(objective: Objective, k: int = 1, *, iters: int = 100, tol: float = 1e-3,
                    seed: int = 0, centre: Mapping[str, Tensor] | None = None,
                    operator: HessianOperator | None = None, method: str = "subspace") -> EigenResult:
    """The ``k`` eigenvalues of largest magnitude of the Hessian at the centre.

    - ``"subspace"`` (default): power iteration on ``k`` vectors at once with Rayleigh-Ritz (block
      power iteration): each step multiplies the block by ``H``, diagonalises the ``k x k``
      projection and rotates the block onto its Ritz vectors. Eigenvalues close to each other come
      out in the right order, which one-at-a-time deflation does not guarantee.
    - ``"deflation"``: power iteration on ``(H - sum_j l_j v_j v_j^T) v``, one eigenvalue after the
      other, every iterate orthogonalised against the eigenvectors found before.

    Args:
        objective: The loss.
        k: Number of eigenvalues.
        iters: Largest number of iterations (per eigenvalue for ``"deflation"``).
        tol: Stop when every estimate changed by at most ``tol`` times its size.
        seed: Seed of the starting vectors.
        centre: Weights (default ``objective.params``).
        operator: A :class:`HessianOperator` of the same objective and centre to reuse.
        method: ``"subspace"`` or ``"deflation"``.
    """
    if method not in ("subspace", "deflation"):
        raise LandscapeError(f"method={method!r}; choose 'subspace' or 'deflation'")
    op = operator or HessianOperator(objective, centre)
    generator = torch.Generator().manual_seed(int(seed))
    run = _subspace if method == "subspace" else _deflation
    values, vectors, history, converged = run(op, k, iters, tol, generator)
    for i, (value, hist, done) in enumerate(zip(values, history, converged, strict=True)):
        _logger.info("eigenvalue %d: %.6g after %d iterations%s", i + 1, value, len(hist),
                     "" if done else " (not converged)")
    return EigenResult(values, history, converged, op.calls, op.loss, vectors)


_Eigen = tuple[list[float], list[ParamDict], list[list[float]], list[bool]]


def _deflation(op: HessianOperator, k: int, iters: int, tol: float, generator: torch.Generator) -> _Eigen:
    values: list[float] = []
    vectors: list[ParamDict] = []
    history: list[list[float]] = []
    converged: list[bool] = []
    for _ in range(k):
        v = _orthonormal(op.like("gaussian", generator), vectors)
        lam, hist, done = 0.0, [], False
        for _ in range(iters):
            w = op(v)
            for value, u in zip(values, vectors, strict=True):
                w = _axpy(-value * _dot(u, v), u, w)
            new = _dot(v, w)
            hist.append(new)
            w = _orthonormal(w, vectors)
            if not w:  # H v = 0 on the remaining space
                lam, done = new, True
                break
            v = w
            if len(hist) > 1 and abs(new - lam) <= tol * abs(lam):
                lam, done = new, True
                break
            lam = new
        values.append(lam)
        vectors.append(v)
        history.append(hist)
        converged.append(done)
    return values, vectors, history, converged


def _subspace(op: HessianOperator, k: int, iters: int, tol: float, generator: torch.Generator) -> _Eigen:
    basis = _orthonormal_block([op.like("gaussian", generator) for _ in range(k)], op, generator)
    history: list[list[float]] = [[] for _ in range(k)]
    values: list[float] = []
    ritz: list[ParamDict] = basis
    done = False
    for _ in range(iters):
        images = [op(v) for v in basis]
        t = torch.tensor([[_dot(u, w) for w in images] for u in basis], dtype=torch.float64)
        lam, q = torch.linalg.eigh((t + t.T) / 2)
        order = lam.abs().argsort(descending=True)
        lam, q = lam[order], q[:, order]
        new = [float(v) for v in lam]
        ritz = [_combine(basis, q[:, i]) for i in range(k)]
        done = bool(values) and all(abs(a - b) <= tol * abs(b) for a, b in zip(new, values, strict=True))
        values = new
        for i, v in enumerate(new):
            history[i].append(v)
        if done:
            break
        basis = _orthonormal_block([_combine(images, q[:, i]) for i in range(k)], op, generator)
    return values, ritz, history, [done] * k


def _combine(vectors: list[ParamDict], coefs: Tensor) -> ParamDict:
    """``sum_i coefs[i] * vectors[i]``."""
    out = _scale(vectors[0], float(coefs[0]))
    for v, c in zip(vectors[1:], coefs[1:].tolist(), strict=True):
        out = _axpy(c, v, out)
    return out


def _orthonormal_block(vectors: list[ParamDict], op: HessianOperator, generator: torch.Generator
                       ) -> list[ParamDict]:
    """Gram-Schmidt; a vector that vanishes (H of lower rank) is replaced by a fresh random one."""
    basis: list[ParamDict] = []
    for v in vectors:
        u = _orthonormal(v, basis)
        while not u:
            u = _orthonormal(op.like("gaussian", generator), basis)
        basis.append(u)
    return basis


def _orthonormal(v: ParamDict, basis: list[ParamDict]) -> ParamDict:
    """``v`` minus its projections on ``basis`` (orthonormal), normalised; ``{}`` when it vanishes."""
    for u in basis:
        v = _axpy(-_dot(u, v), u, v)
    norm = _norm(v)
    return _scale(v, 1.0 / norm) if norm > 0 else {}


@dataclass
class TraceResult:
    """Hutchinson estimate of the Hessian trace.

    Attributes:
        trace: Mean of ``v . H v`` over Rademacher vectors ``v``.
        std_err: Standard error of that mean.
        estimates: Every sample ``v . H v``.
        history: Running mean after each sample (convergence).
        loss: Loss at the centre.
    """

    trace: float
    std_err: float
    estimates: list[float]
    history: list[float]
    loss: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


def hutchinson_trace(objective: Objective, samples: int = 100, *, seed: int = 0, tol: float | None = None,
                     min_samples: int = 10, centre: Mapping[str, Tensor] | None = None,
                     operator: HessianOperator | None = None) -> TraceResult:
    """Hessian trace ``E[v . H v]`` over Rademacher vectors (Hutchinson).

    Args:
        objective: The loss.
        samples: Largest number of vectors.
        seed: Seed of the vectors.
        tol: Stop early once ``std_err <= tol * |trace|`` (after ``min_samples``).
        min_samples: Vectors before early stopping may apply.
        centre: Weights (default ``objective.params``).
        operator: A :class:`HessianOperator` of the same objective and centre to reuse.
    """
    if samples < 1:
        raise LandscapeError(f"samples={samples}: need at least one vector")
    op = operator or HessianOperator(objective, centre)
    generator = torch.Generator().manual_seed(int(seed))
    estimates: list[float] = []
    history: list[float] = []
    for _ in range(samples):
        v = op.like("rademacher", generator)
        estimates.append(_dot(v, op(v)))
        history.append(sum(estimates) / len(estimates))
        err = _std_err(estimates)
        if tol is not None and len(estimates) >= min_samples and err <= tol * abs(history[-1]):
            break
    _logger.info("Hessian trace %.6g +- %.2g (%d vectors)", history[-1], _std_err(estimates), len(estimates))
    return TraceResult(history[-1], _std_err(estimates), estimates, history, op.loss)


def _std_err(x: list[float]) -> float:
    if len(x) < 2:
        return float("inf")
    mean = sum(x) / len(x)
    return math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1) / len(x))
