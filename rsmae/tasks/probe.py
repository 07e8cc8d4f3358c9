"""Frozen-feature evaluation: cls features, k-nearest-neighbour, the one head fitter and its LR sweep.

Pure functions: no global RNG is touched by the linear head (it starts at zero and is trained
full-batch, so a probe is deterministic), the encoder's train/eval mode is restored. Features are
cached once, so a probe takes seconds.

:func:`fit_head` is the one full-batch head fitter of rsmae (a linear probe or an MLP head, single- or
multi-label) and :func:`sweep_lr` the one learning-rate sweep on a validation split; the probe
callback, scene classification, multi-label classification and the floors all call them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LR_SWEEP",
    "extract_features",
    "fit_head",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "small_problem_threads",
    "sweep_lr",
]

_logger = logging.getLogger(__name__)

LR_SWEEP = (1e-3, 3e-3, 1e-2, 3e-2)  # learning rates a head is fitted with; the validation split chooses


def _batches(data: Tensor | Iterable[Any], batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for batch in data:
        if isinstance(batch, dict):
            yield batch["image"]
        else:
            yield batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    data: Tensor | Iterable[Any],
    *,
    batch_size: int = 128,
    img_size: int | None = None,
    pool: str = "cls",
    device: torch.device | str | None = None,
) -> Tensor:
    """Features of a frozen timm ViT: the cls token (or the mean patch token) after the final norm.

    Args:
        encoder: A timm ``VisionTransformer`` (``forward_features`` returns all tokens).
        data: Images ``(N, C, H, W)``, or an iterable of batches (dicts with ``"image"``, tuples
            whose first item is the images, or tensors).
        batch_size: Batch size when ``data`` is a tensor.
        img_size: Resize inputs to this size (bilinear, antialiased) when it differs.
        pool: ``"cls"`` or ``"mean"`` (of the patch tokens).
        device: Where to run; default the encoder's device.

    Returns:
        ``(N, D)`` float32 features on the CPU.
    """
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool={pool!r}; choose 'cls' or 'mean'")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    out = []
    try:
        for images in _batches(data, batch_size):
            x = images.to(device, torch.float32)
            if img_size is not None and tuple(x.shape[-2:]) != (img_size, img_size):
                x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True)
            with torch.autocast(device.type, enabled=False):
                tokens = encoder.forward_features(x)
            feats = tokens[:, 0] if pool == "cls" else tokens[:, prefix:].mean(dim=1)
            out.append(feats.float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int = 20,
    *,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> Tensor:
    """Class votes of a weighted k-NN classifier on cosine similarity (as in DINO).

    Each of the ``k`` nearest training samples votes for its class with weight
    ``exp(similarity / temperature)``.

    Args:
        train_features: ``(N, D)``.
        train_labels: ``(N,)`` class indices.
        test_features: ``(M, D)``.
        k: Neighbours (capped at ``N``).
        temperature: Softness of the vote weights.
        num_classes: Number of classes; default from the labels.

    Returns:
        ``(M, num_classes)`` vote weights (the prediction is their argmax).
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    sim, idx = (test @ train.T).topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), num_classes)
    votes.scatter_add_(1, train_labels.long()[idx], (sim / temperature).exp())
    return votes


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    *,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Accuracy of :func:`knn_predict` on ``test_labels``, in [0, 1]."""
    _check(train_features, train_labels, test_features, test_labels)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    votes = knn_predict(train_features, train_labels, test_features, k, temperature=temperature,
                        num_classes=num_classes)
    return float((votes.argmax(1) == test_labels.long()).float().mean())


def fit_head(
    x: Tensor,
    y: Tensor,
    *,
    head: Literal["linear", "mlp"] = "linear",
    lr: float = 1e-2,
    steps: int = 300,
    weight_decay: float | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Fit a head full-batch on cached features: the one head fitter.

    - ``"linear"`` (MAE's linear probe): BatchNorm without affine holding the training features'
      statistics, then a zero-initialised linear layer, trained with Adam on the normalised features;
      deterministic, no RNG.
    - ``"mlp"``: BatchNorm without affine (batch statistics while training), linear, GELU, linear,
      initialised from ``torch.manual_seed(seed)``, trained with AdamW.

    Targets ``(N,)`` are class indices (cross-entropy); ``(N, C)`` multi-hot rows are multi-label
    (binary cross-entropy per class).

    Args:
        x: ``(N, D)`` features.
        y: ``(N,)`` class indices or ``(N, C)`` multi-hot labels.
        head: ``"linear"`` or ``"mlp"``.
        lr: Learning rate.
        steps: Full-batch optimiser steps.
        weight_decay: Optimiser weight decay; ``None``: 0 (linear) or 1e-4 (mlp).
        num_classes: Outputs; default from the labels.
        seed: Seed of the MLP head's initialisation.

    Returns:
        The head in eval mode (``head(features)`` gives logits).
    """
    multilabel = y.ndim == 2
    if multilabel:
        target, outputs, loss = y.float(), y.shape[1], F.binary_cross_entropy_with_logits
    else:
        target, outputs, loss = y.long(), num_classes or int(y.max()) + 1, F.cross_entropy
    if head == "mlp":
        torch.manual_seed(seed)
        model = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False), nn.Linear(x.shape[1], x.shape[1]),
                              nn.GELU(), nn.Linear(x.shape[1], outputs))
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=1e-4 if weight_decay is None else weight_decay)
        _full_batch(model.train(), x, target, loss, optimizer, steps)
        return model.eval()
    if head != "linear":
        raise ValueError(f"head={head!r}; choose 'linear' or 'mlp'")
    probe, xn = _linear_probe(x.float(), outputs, exact_var=multilabel)
    optimizer = torch.optim.Adam(probe[1].parameters(), lr=lr, weight_decay=weight_decay or 0.0)
    _full_batch(probe[1], xn, target, loss, optimizer, steps)
    return probe


def _linear_probe(x: Tensor, outputs: int, *, exact_var: bool) -> tuple[nn.Sequential, Tensor]:
    """BatchNorm holding ``x``'s statistics + a zero linear layer, in eval mode; and ``x`` normalised.

    Multi-label heads have always taken the variance itself, single-label ones the squared std: kept,
    so that every head's numbers stay those of the tables to the last bit.
    """
    var = x.var(0, unbiased=False) if exact_var else x.std(0, unbiased=False).square()
    norm = nn.BatchNorm1d(x.shape[1], affine=False)  # eval mode: uses the training statistics
    with torch.no_grad():
        norm.running_mean.copy_(x.mean(0))
        norm.running_var.copy_(var)
    linear = nn.Linear(x.shape[1], outputs)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    probe = nn.Sequential(norm, linear).eval()
    with torch.no_grad():
        return probe, norm(x)  # a fixed affine map in eval mode: applied once, not per step


def _full_batch(module: nn.Module, x: Tensor, target: Tensor, loss: Callable[[Tensor, Tensor], Tensor],
                optimizer: torch.optim.Optimizer, steps: int) -> None:
    with torch.enable_grad(), small_problem_threads(x.numel()):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss(module(x), target).backward()
            optimizer.step()


def sweep_lr(fit: Callable[[float], nn.Module], score: Callable[[nn.Module], float],
             lrs: Iterable[float] = LR_SWEEP) -> tuple[nn.Module, float, float]:
    """Fit a head at each learning rate and keep the best-scoring one (the first of equals).

    Args:
        fit: ``fit(lr)`` -> a head (e.g. a :func:`fit_head` on the training features).
        score: Validation score of a head (higher is better), computed without gradients.
        lrs: Learning rates, tried in order.

    Returns:
        ``(head, lr, score)`` of the best learning rate.
    """
    best: tuple[nn.Module, float, float] | None = None
    for lr in lrs:
        model = fit(lr)
        with torch.no_grad():
            value = score(model)
        if best is None or value > best[2]:
            best = (model, lr, value)
    if best is None:
        raise ValueError("sweep_lr needs at least one learning rate")
    return best


def fit_linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
) -> nn.Module:
    """Fit a linear probe: BatchNorm without affine, then a linear layer (:func:`fit_head` ``"linear"``).

    Args:
        train_features: ``(N, D)``.
        train_labels: ``(N,)`` class indices.
        steps: Adam steps.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        num_classes: Number of classes; default from the labels.

    Returns:
        The probe in eval mode (``probe(features)`` gives logits).
    """
    return fit_head(train_features, train_labels, head="linear", lr=lr, steps=steps,
                    weight_decay=weight_decay, num_classes=num_classes)


@contextlib.contextmanager
def small_problem_threads(numel: int, limit: int = 1 << 20) -> Iterator[None]:
    """Run tiny tensor work (``numel < limit``) on one thread: thread hand-offs cost more than the math.

    On a busy machine each multithreaded op of a few thousand elements waits for its worker threads,
    which made a 300-step probe 10x slower than on one thread. The thread count is restored after.
    """
    if numel >= limit:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
) -> float:
    """Accuracy of :func:`fit_linear_probe` on the test features, in [0, 1]."""
    _check(train_features, train_labels, test_features, test_labels)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    probe = fit_linear_probe(train_features, train_labels, steps=steps, lr=lr, weight_decay=weight_decay,
                             num_classes=num_classes)
    with torch.no_grad():
        pred = probe(test_features.float()).argmax(1)
    return float((pred == test_labels.long()).float().mean())


def _check(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor) -> None:
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D), got {tuple(train_f.shape)} and {tuple(test_f.shape)}"
        )
    if len(train_f) != len(train_y) or len(test_f) != len(test_y) or not len(train_f) or not len(test_f):
        raise ValueError(f"{len(train_f)} train features for {len(train_y)} labels, {len(test_f)} test "
                         f"features for {len(test_y)} labels; both sets must be non-empty and match")
