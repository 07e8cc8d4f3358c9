"""Deterministic losses of the weights: ``objective(params) -> scalar`` on fixed batches.

An objective holds a private copy of the model (eval mode, math attention for double backward
and ``vmap``, no gradient checkpointing) and evaluates it with ``torch.func.functional_call``: the
caller's model is never touched, and the same weights always give the same loss (masks, batches
and any head are fixed when the objective is built; LESSONS.md 10). Weights are ``name -> tensor``
dicts of the *trainable* parameters (:func:`~rsmae.landscape.directions.trainable_params`);
everything else (a fixed position table, the RC-MAE teacher, a probe head) stays as it is.

- :class:`MAEObjective`: the MAE reconstruction loss with per-batch mask noise fixed by a seed.
- :class:`RCMAEObjective`: the RC-MAE student loss (reconstruction + consistency with the teacher's
  reconstruction under the same mask; the teacher is fixed, its predictions computed once).
- :class:`ProbeObjective`: the linear-probe loss: encoder perturbed, BatchNorm-without-affine +
  linear head fitted once at the centre on cached features
  (:func:`~rsmae.tasks.probe.fit_linear_probe`), then held fixed.
- :class:`ClassificationObjective`: cross-entropy of a classifier (encoder + head, all perturbed).

Objectives are plain picklable objects, so surface rows can run in other processes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from rsmae.errors import LandscapeError
from rsmae.landscape.directions import ParamDict, fingerprint
from rsmae.models import RCMAE, MaskedAutoencoder, masked_mse, set_fused_attention
from rsmae.tasks.probe import fit_linear_probe, small_problem_threads

__all__ = [
    "SMALL_WORK",
    "ClassificationObjective",
    "MAEObjective",
    "Objective",
    "ProbeObjective",
    "RCMAEObjective",
]

_logger = logging.getLogger(__name__)

# Below this many elements in the largest activation, evaluations run on one thread (auto_threads).
SMALL_WORK = 1 << 20


def _private_copy(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """A deep copy in eval mode, math attention, no gradient checkpointing, no parameter gradients."""
    clone = copy.deepcopy(module)
    if dtype is not None:
        clone = clone.to(dtype)
    clone.eval()
    set_fused_attention(clone, False)
    for m in clone.modules():
        if getattr(m, "grad_checkpointing", False):
            m.grad_checkpointing = False
    clone.requires_grad_(False)
    return clone


def _split(x: Tensor, batch_size: int | None) -> list[Tensor]:
    if len(x) == 0:
        raise LandscapeError("an objective needs at least one sample; got an empty batch")
    return list(x.split(batch_size or len(x)))


class Objective:
    """A deterministic loss ``objective(params) -> scalar`` around the weights :attr:`params`.

    Subclasses set :attr:`name`, build their fixed data in ``__init__`` and implement
    :meth:`loss`. ``module`` is the part of the model that the weights address (names relative to
    it).

    Args:
        module: The model whose trainable parameters are the weights (copied, never modified).
        dtype: Evaluate in this dtype (e.g. ``torch.float64`` for finite-difference checks).

    Attributes:
        params: Centre weights ``name -> tensor`` (trainable parameters of ``module``).
        module: The private copy that is evaluated.
        options: JSON-able settings that define the loss (part of cache keys and reports).
        auto_threads: Run evaluations whose largest activation (times the points batched) has fewer
            than :data:`SMALL_WORK` elements on one thread (restored after): on a busy machine
            multithreaded small ops wait for descheduled threads (measured 50x slower forwards of
            the tiny ViT on a loaded 2-core CPU). Results do not depend on it beyond rounding.
    """

    name = "objective"
    auto_threads = True

    def __init__(self, module: nn.Module, *, dtype: torch.dtype | None = None) -> None:
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        if not names:
            raise LandscapeError(f"{type(module).__name__} has no trainable parameters to perturb")
        self.module = _private_copy(module, dtype)
        own = dict(self.module.named_parameters())
        self.params: ParamDict = {n: own[n].detach() for n in names}
        self.options: dict[str, Any] = {}
        self._data_key = ""
        self._work: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return next(iter(self.params.values())).dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(iter(self.params.values())).device

    def _data(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """The scalar loss at ``params`` (override)."""
        raise NotImplementedError

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        """:meth:`loss` (on one thread when the evaluation is small, see ``auto_threads``)."""
        with self.threads():
            return self.loss(params)

    @property
    def work(self) -> int:
        """Elements of the largest module output in one evaluation (measured once, with hooks)."""
        if self._work is None:
            sizes = [0]

            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, Tensor):
                    sizes.append(output.numel())

            handles = [m.register_forward_hook(hook) for m in self.module.modules()]
            before = torch.get_num_threads()
            torch.set_num_threads(1)  # a measurement: the size does not depend on threads
            try:
                with torch.no_grad():
                    self.loss(self.params)
            finally:
                torch.set_num_threads(before)
                for handle in handles:
                    handle.remove()
            self._work = max(sizes)
        return self._work

    @contextlib.contextmanager
    def threads(self, points: int = 1) -> Iterator[None]:
        """One thread inside when ``auto_threads`` and ``work * points < SMALL_WORK``."""
        if not self.auto_threads:
            yield
            return
        with small_problem_threads(self.work * points, limit=SMALL_WORK):
            yield

    def many(self, points: Mapping[str, Tensor], *, use_vmap: bool = True) -> Tensor:
        """Losses of ``K`` points ``name -> (K, *shape)`` without gradients: ``(K,)``.

        With ``use_vmap`` the points run batched through ``torch.func.vmap`` (one forward for all);
        otherwise one after the other.
        """
        k = next(iter(points.values())).shape[0]
        with torch.no_grad(), self.threads(k if use_vmap else 1):
            if use_vmap:
                return vmap(self.loss)(dict(points))
            return torch.stack([self.loss({n: v[i] for n, v in points.items()}) for i in range(k)])

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the loss: name, options, fingerprints of centre weights and data."""
        return {"objective": self.name, **self.options, "weights": fingerprint(self.params),
                "data": self._data_key}


def _unwrap_mae(model: nn.Module) -> MaskedAutoencoder:
    mae = model.student if isinstance(model, RCMAE) else model
    if not isinstance(mae, MaskedAutoencoder):
        raise LandscapeError(f"expected a MaskedAutoencoder or RCMAE, got {type(model).__name__}")
    return mae


class MAEObjective(Objective):
    """MAE reconstruction loss on fixed images with fixed per-batch mask noise.

    The loss is the sample-weighted mean over batches of the masked-patch MSE. An RC-MAE is
    evaluated through its student (reconstruction term only).

    Args:
        model: A :class:`~rsmae.models.MaskedAutoencoder` (or an RC-MAE: its student).
        images: ``(N, C, H, W)`` normalised images.
        batch_size: Samples per forward (default all).
        seed: Seed of the mask noise (one generator, batch after batch).
        mask_ratio: Overrides the model's ratio.
        gsd: ``(N,)`` metres per pixel for ``gsd_pos_embed`` models.
        dtype: Evaluation dtype.
    """

    name = "mae"

    def __init__(self, model: nn.Module, images: Tensor, *, batch_size: int | None = None, seed: int = 0,
                 mask_ratio: float | None = None, gsd: Tensor | None = None,
                 dtype: torch.dtype | None = None) -> None:
        mae = _unwrap_mae(model)
        super().__init__(mae, dtype=dtype)
        self.images = _split(self._data(images), batch_size)
        generator = torch.Generator().manual_seed(int(seed))
        self.noise = [mae.make_noise(len(b), generator=generator, device="cpu").to(self.device)
                      for b in self.images]
        self.gsd: list[Tensor | None] = (list(gsd.to(self.device).split([len(b) for b in self.images]))
                                         if gsd is not None else [None] * len(self.images))
        self.mask_ratio = mae.mask_ratio if mask_ratio is None else float(mask_ratio)
        with torch.no_grad():  # the reconstruction target depends on the images only: computed once
            self.targets = [self.module.target(x) for x in self.images]
        self.total = sum(len(b) for b in self.images)
        self.options = {"samples": self.total, "seed": int(seed), "mask_ratio": self.mask_ratio}
        self._data_key = fingerprint({"images": images, "noise": torch.cat(self.noise)})

    def _outputs(self, params: Mapping[str, Tensor]) -> list[tuple[int, Any]]:
        return [(len(x), functional_call(self.module, dict(params), (x,),
                                         {"noise": n, "mask_ratio": self.mask_ratio, "gsd": g, "target": t}))
                for x, n, g, t in zip(self.images, self.noise, self.gsd, self.targets, strict=True)]

    def loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """Masked-patch MSE at ``params``."""
        return sum(k * out.loss for k, out in self._outputs(params)) / self.total


class RCMAEObjective(MAEObjective):
    """RC-MAE student loss: reconstruction + ``gamma`` x consistency with the fixed teacher.

    The teacher's reconstructions under the same masks are computed once at construction (the
    teacher is not perturbed), so each evaluation costs one student forward, and the centre value
    equals ``RCMAE.forward(images, noise=...).loss``.

    Args:
        model: The :class:`~rsmae.models.RCMAE`.
        images: ``(N, C, H, W)`` normalised images.
        **kwargs: As :class:`MAEObjective` (``batch_size``, ``seed``, ``mask_ratio``, ``gsd``,
            ``dtype``).
    """

    name = "rcmae"

    def __init__(self, model: RCMAE, images: Tensor, **kwargs: Any) -> None:
        if not isinstance(model, RCMAE):
            raise LandscapeError(f"RCMAEObjective needs an RCMAE, got {type(model).__name__}")
        super().__init__(model, images, **kwargs)
        teacher = _private_copy(model.teacher, kwargs.get("dtype"))
        with torch.no_grad():
            self.teacher_pred = [teacher(x, noise=n, mask_ratio=self.mask_ratio, gsd=g).pred
                                 for x, n, g in zip(self.images, self.noise, self.gsd, strict=True)]
        self.consistency_weight = model.consistency_weight
        self.options["consistency_weight"] = self.consistency_weight
        self._data_key = fingerprint({"images": images, "noise": torch.cat(self.noise),
                                      "teacher": torch.cat(self.teacher_pred)})

    def loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """Reconstruction + consistency at ``params``."""
        total = 0
        for (k, out), teacher in zip(self._outputs(params), self.teacher_pred, strict=True):
            consistency = masked_mse(out.pred, teacher, out.mask)
            total = total + k * (out.recon_loss + self.consistency_weight * consistency)
        return total / self.total


class _Features(nn.Module):
    """Frozen-feature path of a timm ViT: the cls token (or mean patch token) after the final norm."""

    def __init__(self, encoder: nn.Module, pool: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.encoder.forward_features(x)
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, int(getattr(self.encoder, "num_prefix_tokens", 1)) :].mean(dim=1)


class ProbeObjective(Objective):
    """Linear-probe loss: the encoder is perturbed, the probe head stays as fitted at the centre.

    The head is fitted on ``images``; the loss is measured on ``eval_images`` when given (images no
    model was trained on), else on the fitting images.

    Args:
        encoder: A timm ViT (``forward_features`` returns all tokens), e.g. a loaded backbone.
        images: ``(N, C, H, W)`` normalised images the head is fitted on (resized to the encoder's
            size if needed).
        labels: ``(N,)`` class indices.
        eval_images: ``(M, C, H, W)`` normalised images of the loss (default ``images``).
        eval_labels: ``(M,)`` their class indices.
        num_classes: Default ``labels.max() + 1``.
        pool: ``"cls"`` or ``"mean"``.
        steps: Adam steps of the head fit.
        lr: Adam learning rate of the head fit.
        weight_decay: Adam weight decay of the head fit.
        batch_size: Samples per forward (default all).
        dtype: Evaluation dtype.
    """

    name = "probe"

    def __init__(self, encoder: nn.Module, images: Tensor, labels: Tensor, *,
                 eval_images: Tensor | None = None, eval_labels: Tensor | None = None,
                 num_classes: int | None = None, pool: str = "cls",
                 steps: int = 300, lr: float = 1e-2, weight_decay: float = 0.0, batch_size: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if pool not in ("cls", "mean"):
            raise LandscapeError(f"pool={pool!r}; choose 'cls' or 'mean'")
        if (eval_images is None) != (eval_labels is None):
            raise LandscapeError("give eval_images and eval_labels together")
        for x, y in ((images, labels), (eval_images, eval_labels)):
            if x is not None and y is not None and len(y) != len(x):
                raise LandscapeError(f"{len(x)} images but {len(y)} labels")
        super().__init__(_Features(encoder, pool), dtype=dtype)
        fit_images = _split(self._data(_resize(images, encoder)), batch_size)
        fit_labels = labels.long().to(self.device)
        num_classes = num_classes or int(labels.max()) + 1
        with torch.no_grad():
            features = torch.cat([self.module(x) for x in fit_images])
        head = fit_linear_probe(features.float(), fit_labels, steps=steps, lr=lr, weight_decay=weight_decay,
                                num_classes=num_classes)
        self.head = head.to(self.dtype).eval().requires_grad_(False)
        with torch.no_grad():
            self.train_accuracy = float((self.head(features).argmax(1) == fit_labels).float().mean())
        held_out = eval_images is not None and eval_labels is not None
        if eval_images is not None and eval_labels is not None:
            self.images = _split(self._data(_resize(eval_images, encoder)), batch_size)
            self.labels = eval_labels.long().to(self.device)
        else:
            self.images, self.labels = fit_images, fit_labels
        self.options = {"samples": len(images), "pool": pool, "steps": steps, "lr": lr,
                        "weight_decay": weight_decay, "num_classes": num_classes,
                        **({"eval_samples": len(self.labels)} if held_out else {})}
        keyed = {"images": torch.cat(fit_images), "labels": fit_labels}
        if held_out:
            keyed |= {"eval_images": torch.cat(self.images), "eval_labels": self.labels}
        self._data_key = fingerprint(keyed)
        _logger.info("probe head fitted at the centre: train accuracy %.3f", self.train_accuracy)

    def loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """Cross-entropy of the fixed head on the features at ``params``."""
        features = torch.cat([functional_call(self.module, dict(params), (x,)) for x in self.images])
        return F.cross_entropy(self.head(features), self.labels)


def _resize(images: Tensor, model: nn.Module) -> Tensor:
    """Images resized to the input size of ``model`` (a ViT, or a module holding one as ``encoder``)."""
    vit = model if hasattr(model, "patch_embed") else getattr(model, "encoder", model)
    size = getattr(getattr(vit, "patch_embed", None), "img_size", None)
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True).to(images.dtype)


class ClassificationObjective(Objective):
    """Cross-entropy of a classifier ``model(images) -> logits``; every trainable weight is perturbed.

    Args:
        model: E.g. a timm ViT with ``num_classes > 0`` (encoder and head).
        images: ``(N, C, H, W)`` normalised images.
        labels: ``(N,)`` class indices.
        batch_size: Samples per forward (default all).
        dtype: Evaluation dtype.
    """

    name = "classification"

    def __init__(self, model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if len(labels) != len(images):
            raise LandscapeError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(model, dtype=dtype)
        images = self._data(_resize(images, model))
        self.images = _split(images, batch_size)
        self.labels = labels.long().to(self.device)
        self.options = {"samples": len(images)}
        self._data_key = fingerprint({"images": images, "labels": self.labels})

    def loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """Cross-entropy at ``params``."""
        logits = torch.cat([functional_call(self.module, dict(params), (x,)) for x in self.images])
        return F.cross_entropy(logits, self.labels)
