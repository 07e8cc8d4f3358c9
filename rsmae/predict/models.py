"""What a prediction runs: a backbone, a change model or a classifier as one export-friendly module.

:class:`EmbedNet` (raw pixels -> normalised -> encoder -> patch features ``(N, K, h, w)``, or one
pooled vector per window), :class:`ChangeNet` (raw pairs -> change probability ``(N, 1, H, W)``) and
:class:`ClassifyNet` (raw pixels -> class probabilities ``(N, K)``) hold the normalisation inside,
so the same module runs in PyTorch or, exported, in onnxruntime (:mod:`rsmae.predict.onnx`). A
:class:`Predictor` adds what the scan needs: the bands, the window, the cell size, and the fill of
nodata pixels (the band's mean, i.e. 0 after normalisation). A classifier's window probabilities are
spread over the window's pixels, so the scan blends overlapping windows into a per-pixel map as it
blends change probabilities.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rsmae.errors import WeightsError
from rsmae.models import fused_attention_pays, load_backbone, read_backbone_meta, set_fused_attention
from rsmae.predict.errors import PredictError

__all__ = ["ChangeNet", "ClassifyNet", "EmbedNet", "Predictor", "load_change_predictor",
           "load_classify_predictor", "load_embed_predictor", "load_onnx_predictor", "resolve_precision"]

_logger = logging.getLogger(__name__)


class EmbedNet(nn.Module):
    """Raw pixels ``(N, C, H, W)`` -> patch features ``(N, K, H/p, W/p)`` (or ``(N, K, 1, 1)`` pooled).

    Args:
        encoder: A timm ViT encoder.
        mean: Per-band mean (pixel units).
        std: Per-band standard deviation.
        pool: Average the patch features of each window.
    """

    def __init__(self, encoder: nn.Module, mean: list[float], std: list[float], pool: bool = False) -> None:
        super().__init__()
        self.encoder, self.pool = encoder, pool
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.prefix = int(getattr(encoder, "num_prefix_tokens", 1))

    def forward(self, x: Tensor) -> Tensor:
        """Features of raw windows (no data-dependent control flow: exportable)."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.encoder.forward_features((x - self.mean) / self.std)[:, self.prefix:]
        if self.pool:
            return tokens.mean(dim=1)[:, :, None, None]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class ChangeNet(nn.Module):
    """Raw pairs ``(N, 2, C, H, W)`` -> change probability ``(N, 1, H, W)``."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1))

    def forward(self, pair: Tensor) -> Tensor:
        """Probabilities of raw pairs."""
        return torch.sigmoid(self.model((pair - self.mean) / self.std))[:, None]


class ClassifyNet(nn.Module):
    """Raw pixels ``(N, C, H, W)`` -> class probabilities ``(N, K)`` (softmax of the classifier)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities of raw windows."""
        return torch.softmax(self.head(self.encoder.forward_features((x - self.mean) / self.std)), dim=1)


@dataclass
class Predictor:
    """A model ready for the scan.

    Attributes:
        kind: ``"embed"``, ``"change"`` or ``"classify"``.
        path: The model file.
        module: The PyTorch module (:class:`EmbedNet` / :class:`ChangeNet` / :class:`ClassifyNet`).
        bands: Input bands, in channel order.
        sensor: Registry sensor of the bands.
        mean: Per-band fill value of nodata pixels.
        window: Input window side.
        scale: Pixels per output cell.
        channels: Output channels.
        threshold: Change threshold (change models).
        classes: Class names in output-channel order (classifiers).
        match_dates: Date 2 is matched to date 1 before the model (a change model trained so).
        run: ``(N, T, C, w, w)`` filled float32 -> ``(N, K, ...)``; set by :meth:`use`.
    """

    kind: str
    path: Path
    module: nn.Module | None
    bands: list[str]
    sensor: str | None
    mean: list[float]
    window: int
    scale: int
    channels: int
    threshold: float = 0.5
    classes: list[str] = field(default_factory=list)
    match_dates: bool = False
    run: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def use(self, engine: str = "torch", threads: int | None = None, precision: str = "32",
            device: str | torch.device = "cpu") -> Predictor:
        """Run on ``"torch"`` or ``"onnx"`` (onnxruntime, the module exported in memory).

        A predictor loaded from an ``.onnx`` file runs in onnxruntime whatever ``engine`` says.
        Outputs come back as float32 numpy arrays whatever the precision and device.

        Args:
            engine: ``"torch"`` or ``"onnx"``.
            threads: Intra-op threads of the model calls (``None``: the library's default). On a
                machine shared with other jobs, fewer threads than cores can be several times faster.
            precision: ``"auto"`` (bf16 autocast where ``device`` computes bf16 natively: a CUDA GPU
                with bf16, a CPU with AVX512-BF16 or AMX; else fp32), ``"32"`` or ``"bf16"``
                (Lightning's ``"32-true"``, ``"bf16-mixed"`` are accepted). onnxruntime runs fp32.
                The default is fp32 (outputs equal to the module's); callers choose ``"auto"``.
            device: Where the PyTorch module runs (moved there once; inputs per call).

        Raises:
            ValueError: an unknown engine or precision, or bf16 asked of onnxruntime.
        """
        on_torch = engine == "torch" and self.module is not None
        dtype = resolve_precision(precision, device if on_torch else "onnx")
        if self.module is None or engine == "onnx":
            if dtype != "32":
                raise ValueError(f"precision {precision!r}: onnxruntime runs fp32; pass precision 32 or auto")
            if torch.device(device).type != "cpu":
                raise ValueError(f"device {device!r}: onnxruntime runs on the CPU here; use engine torch")
        if self.module is None:
            if threads is not None:
                from rsmae.predict.onnx import session_runner

                self.run = session_runner(str(self.path), threads)
            return self
        if engine == "torch":
            self.run = _torch_runner(self.module, threads, dtype, torch.device(device))
        elif engine == "onnx":
            from rsmae.predict.onnx import onnx_runner

            self.run = onnx_runner(self.module, self.kind, len(self.bands), self.window, threads)
        else:
            raise ValueError(f"engine {engine!r}; choose torch or onnx")
        return self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Outputs of a batch ``(N, T, C, w, w)`` with NaN at nodata pixels.

        A classifier's ``(N, K)`` probabilities come back as ``(N, K, w, w)`` (each window's at its pixels).
        """
        fill = np.asarray(self.mean, np.float32)[:, None, None]
        x = np.where(np.isnan(batch), fill, batch).astype(np.float32, copy=False)
        if self.kind != "change":
            x = x[:, 0]
        out = self.run(np.ascontiguousarray(x))
        if self.kind == "classify":
            out = np.broadcast_to(out[:, :, None, None], (*out.shape[:2], self.window, self.window))
        return out


_PRECISIONS = {"32": "32", "32-true": "32", "fp32": "32", "float32": "32",
               "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16", "bfloat16": "bf16"}


def resolve_precision(precision: str, device: str | torch.device = "cpu", *,
                      flags: Collection[str] | None = None) -> str:
    """``"32"`` or ``"bf16"``: what ``precision`` means on ``device``.

    ``"auto"`` is bf16 where ``device`` computes bf16 natively (a CUDA GPU with bf16 support, a CPU
    with AVX512-BF16 or AMX-BF16: :func:`rsmae.tasks.precision.default_precision`), else fp32;
    ``device="onnx"`` (onnxruntime) is always fp32.

    Args:
        precision: ``"auto"``, ``"32"`` / ``"32-true"`` or ``"bf16"`` / ``"bf16-mixed"``.
        device: The module's device, or ``"onnx"``.
        flags: CPU feature flags (for tests); read from ``/proc/cpuinfo`` when ``None``.

    Raises:
        ValueError: an unknown precision.
    """
    from rsmae.tasks.precision import default_precision

    key = str(precision).strip().lower()
    if key == "auto":
        if str(device) == "onnx":
            return "32"
        kind = torch.device(device).type
        if kind not in ("cpu", "cuda"):
            return "32"
        return _PRECISIONS[default_precision(kind, flags=flags)]
    if key not in _PRECISIONS:
        raise ValueError(f"precision {precision!r}; choose auto, 32 or bf16")
    return _PRECISIONS[key]


def _torch_runner(module: nn.Module, threads: int | None, precision: str,
                  device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    module.eval().to(device)
    for layer in module.modules():  # convolutions (patch embedding, change decoder) run faster in NHWC
        if isinstance(layer, nn.Conv2d):  # oneDNN / cuDNN: 20-25 % of a change window on an AMX CPU
            layer.to(memory_format=torch.channels_last)
    set_fused_attention(module, fused_attention_pays(device))
    autocast = precision == "bf16"

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        before = torch.get_num_threads()
        if threads is not None:  # for this call only: no process-wide setting is left behind
            torch.set_num_threads(threads)
        try:
            inputs = torch.from_numpy(x).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = module(inputs)
            return out.float().cpu().numpy()
        finally:
            torch.set_num_threads(before)

    return run


_FILE_KINDS = {"rsmae_change": "change", "rsmae_classifier": "classify"}  # metadata key -> task
_NAMES = {"embed": "a backbone", "change": "a change model", "classify": "a scene classifier"}
_TRAIN = {"change": ", or train a change model with rsmae evaluate --task oscd --out DIR",
          "classify": ", or train a classifier with rsmae evaluate --protocol linear (mlp, lastK, full) "
                      "--out DIR"}


def _check_kind(path: Path, wanted: str) -> None:
    """Refuse a model file of another task, saying which command takes it."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.metadata() or {})
    except Exception:  # not safetensors: the loader names the problem
        return
    backbone = "embed" if "rsmae" in keys else None
    found = next((kind for key, kind in _FILE_KINDS.items() if key in keys), backbone)
    if found is not None and found != wanted:
        option = "--backbone" if found == "embed" else "--model"
        raise WeightsError(f"{path}: {_NAMES[found]}, not {_NAMES[wanted]}; run rsmae predict {found} "
                           f"{option} {path}{_TRAIN.get(wanted, '')}")


def load_embed_predictor(path: str | Path, *, pool: bool = False) -> Predictor:
    """A backbone file as a :class:`Predictor` of patch features (or pooled window vectors).

    Raises:
        WeightsError: naming ``path``, when it is not a backbone (e.g. a change model).
        PredictError: when the backbone carries no normalisation statistics.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_predictor(path, "embed")
    _check_kind(path, "embed")
    meta = read_backbone_meta(path)
    if meta.mean is None or meta.std is None:
        raise PredictError(f"{path}: the backbone carries no normalisation statistics; export it from a "
                           "pretraining run on a tile store (its statistics travel with the weights)")
    encoder = load_backbone(path)
    net = EmbedNet(encoder, meta.mean, meta.std, pool=pool)
    scale = meta.img_size if pool else meta.patch_size
    return Predictor("embed", path, net, list(meta.bands), meta.sensor, list(meta.mean), meta.img_size,
                     scale, int(encoder.embed_dim))


def load_change_predictor(path: str | Path) -> Predictor:
    """A change model saved by ``rsmae evaluate --task ... --out`` as a :class:`Predictor`.

    Raises:
        WeightsError: naming ``path``, when it is not a change model (a backbone, another file).
    """
    from rsmae.tasks.change import load_change_model

    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_predictor(path, "change")
    _check_kind(path, "change")
    task, extra = load_change_model(path)
    hp = task.hparams
    if hp.mean is None or hp.std is None:
        raise WeightsError(f"{path}: the change model carries no normalisation statistics; save it again "
                           "with rsmae evaluate --out")
    net = ChangeNet(task.model, list(hp.mean), list(hp.std))
    threshold = float(extra.get("threshold", 0.5))
    sensor = hp.sensor or (hp.encoder or {}).get("sensor")
    return Predictor("change", path, net, list(hp.bands), sensor, list(hp.mean), int(hp.img_size), 1, 1,
                     threshold=threshold, match_dates=bool(extra.get("match_dates", False)))


def _check_saved(path: Path) -> None:
    """Refuse a missing classifier beside the metrics of a protocol that saves none (``knn``, ``head``)."""
    from rsmae.evaluation.probe import no_model_note

    if path.exists():
        return
    try:
        metrics = json.loads((path.parent / "metrics.json").read_text(encoding="utf-8"))
        protocol = str(metrics["protocol"]).strip().lower()
    except (OSError, ValueError, KeyError, TypeError):
        return  # no evaluation here: the loader says the file is missing
    if protocol in ("knn", "head"):
        raise WeightsError(f"{path}: not saved by rsmae evaluate --out {path.parent}: "
                           f"{no_model_note(protocol)}")


def load_classify_predictor(path: str | Path) -> Predictor:
    """A classifier saved by ``rsmae evaluate --protocol linear|mlp|lastK|full --out``: a :class:`Predictor`.

    A linear probe is saved as a classifier whose head holds the probe's normalisation
    (:mod:`rsmae.evaluation.probe`); ``knn`` and ``head`` save no model.

    Raises:
        WeightsError: naming ``path``, when it is not a classifier (a backbone, a change model), or is
            missing beside the metrics of a protocol that saves none (saying which protocol does).
    """
    from rsmae.tasks.finetune import load_classifier

    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_predictor(path, "classify")
    _check_saved(path)
    _check_kind(path, "classify")
    task, classes = load_classifier(path)
    meta = task.encoder.rsmae_meta
    net = ClassifyNet(task.encoder, task.head, list(meta.mean), list(meta.std))
    return Predictor("classify", path, net, list(meta.bands), meta.sensor, list(meta.mean),
                     int(meta.img_size), 1, len(classes), classes=classes)


def load_onnx_predictor(path: str | Path, kind: str) -> Predictor:
    """An exported ``.onnx`` file as a :class:`Predictor` running in onnxruntime.

    Raises:
        WeightsError: naming ``path``, when it is not an rsmae ONNX export or of the other task.
    """
    from rsmae.predict.onnx import onnx_metadata, session_runner

    path = Path(path)
    meta = onnx_metadata(path)
    if meta["task"] != kind:
        raise WeightsError(f"{path}: an ONNX {meta['task']} model, not a {kind} model; run rsmae predict "
                           f"{meta['task']}")
    p = Predictor(kind, path, None, meta["bands"], meta["sensor"], meta["mean"], meta["window"], meta["cell"],
                  meta["channels"], threshold=meta["threshold"], classes=list(meta.get("classes") or []),
                  match_dates=bool(meta.get("match_dates", False)))  # exports before it was recorded: raw
    p.run = session_runner(str(path))
    return p
