"""Export any model file rsmae writes (backbone, change model, classifier, checkpoint) as ONNX.

Above :mod:`rsmae.predict.models` (which loads the predictors) and :mod:`rsmae.predict.onnx` (which
writes and runs ONNX): neither imports the other's upper half.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rsmae.predict.models import load_change_predictor, load_classify_predictor, load_embed_predictor
from rsmae.predict.onnx import export_onnx

__all__ = ["export_any_onnx"]


def export_any_onnx(source: str | Path, out: str | Path, *, pool: bool = False,
                    weights: str = "student") -> tuple[Path, str]:
    """Export a backbone file, a change model, a classifier or a pretraining checkpoint's encoder as ONNX.

    Args:
        source: A backbone ``.safetensors``, a change model or a classifier (``rsmae evaluate --out``) or a
            Lightning checkpoint of ``rsmae fit`` (its encoder is exported as a backbone first).
        out: Output ``.onnx``.
        pool: Backbones: one pooled vector per window instead of patch features.
        weights: Checkpoints of RC-MAE: ``"student"`` or ``"teacher"``.

    Returns:
        The written path and the task (``"embed"``, ``"change"`` or ``"classify"``).
    """
    source = Path(source)
    if _safetensors_keys(source) is None:  # a checkpoint: its encoder, as a backbone file first
        from rsmae.tasks import export_backbone

        with tempfile.TemporaryDirectory(dir=Path(out).parent) as tmp:
            backbone = export_backbone(source, Path(tmp) / "backbone.safetensors", weights)
            return export_onnx(load_embed_predictor(backbone, pool=pool), out), "embed"
    if "rsmae_change" in _safetensors_keys(source):
        return export_onnx(load_change_predictor(source), out), "change"
    if "rsmae_classifier" in _safetensors_keys(source):
        return export_onnx(load_classify_predictor(source), out), "classify"
    return export_onnx(load_embed_predictor(source, pool=pool), out), "embed"


def _safetensors_keys(path: Path) -> set[str] | None:
    """The metadata keys of a safetensors file; ``None`` for another file."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return set(f.metadata() or {})
    except Exception:
        return None
