"""Frozen-feature evaluation: cls features, k-nearest-neighbour and linear-probe accuracy.

Pure functions: no global RNG is touched (the linear head starts at zero and is trained full-batch,
so a probe is deterministic), the encoder's train/eval mode is restored. Features are cached once,
so a probe takes seconds (METHOD.md, "Transfer protocols").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "extract_features",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "small_problem_threads",
]

_logger = logging.getLogger(__name__)


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


def fit_linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
) -> nn.Module:
    """Fit a linear probe: BatchNorm without affine, then a linear layer (MAE's protocol).

    Trained full-batch with Adam on the cached features; the head starts at zero, the
    normalisation uses the statistics of the training features, so the result is deterministic.

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
    num_classes = num_classes or int(train_labels.max()) + 1
    x = train_features.float()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    norm = nn.BatchNorm1d(x.shape[1], affine=False)  # eval mode: uses the training statistics
    with torch.no_grad():
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(std.square())
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    probe = nn.Sequential(norm, head).eval()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    y = train_labels.long()
    with torch.no_grad():
        xn = norm(x)  # a fixed affine map in eval mode: applied once, not per step
    with torch.enable_grad(), small_problem_threads(xn.numel()):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(xn), y).backward()
            optimizer.step()
    return probe


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
