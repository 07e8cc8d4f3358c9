"""ONNX export of backbones, change models and classifiers, and onnxruntime as a prediction engine.

What is exported is the module the scan runs (:class:`~rsmae.predict.models.EmbedNet`,
:class:`~rsmae.predict.models.ChangeNet`, :class:`~rsmae.predict.models.ClassifyNet`): raw pixels
in, normalisation inside, features, change probabilities or class probabilities out; the batch axis
is dynamic, the window is the model's input size. The file's metadata (``metadata_props``) holds
``rsmae_onnx``: the task, bands, sensor, per-band mean (the fill of nodata pixels), window, cell
size, output channels, threshold and class names, so a runtime needs nothing else.

``onnx`` and ``onnxruntime`` are the optional extra ``rsmae[onnx]``; they are imported only here and
only when used.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from rsmae.files import atomic_path
from rsmae.models import set_fused_attention

__all__ = ["OPSET", "export_onnx", "onnx_bytes", "onnx_metadata", "onnx_runner", "session_runner"]

OPSET = 17
_META = "rsmae_onnx"


def _optional(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{name} is not installed: pip install 'rsmae[onnx]' (onnx and onnxruntime)"
                          ) from err


def _example(kind: str, channels: int, window: int, batch: int = 2) -> torch.Tensor:
    shape = (batch, 2, channels, window, window) if kind == "change" else (batch, channels, window, window)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 3000


def onnx_bytes(module: nn.Module, kind: str, channels: int, window: int) -> bytes:
    """The ONNX model of ``module`` (input ``pixels``, output ``out``, dynamic batch axis)."""
    module = module.eval()
    set_fused_attention(module, False)  # the math path exports to plain MatMul/Softmax
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks of the models' forward are constants for one window size: the traced graph is right
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (_example(kind, channels, window),), buffer, input_names=["pixels"],
                          output_names=["out"], dynamic_axes={"pixels": {0: "batch"}, "out": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def onnx_runner(module: nn.Module, kind: str, channels: int, window: int,
                threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Export ``module`` in memory and return an onnxruntime function of float32 batches."""
    return session_runner(onnx_bytes(module, kind, channels, window), threads)


def session_runner(model: bytes | str, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An onnxruntime session of ``model`` (bytes or a path) as a function of float32 batches.

    Args:
        model: The ONNX model or its path.
        threads: Intra-op threads (``None``: onnxruntime's default, one per physical core).
    """
    ort = _optional("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(["out"], {"pixels": x})[0]

    return run


def export_onnx(predictor: object, out: str | Path) -> Path:
    """Write a :class:`~rsmae.predict.models.Predictor`'s module as an ONNX file with its metadata.

    The file is checked by ``onnx.checker`` and written atomically.

    Returns:
        The written path.
    """
    onnx = _optional("onnx")
    p = predictor
    model = onnx.load_from_string(onnx_bytes(p.module, p.kind, len(p.bands), p.window))
    meta = {"task": p.kind, "source": str(p.path), "bands": p.bands, "sensor": p.sensor, "mean": p.mean,
            "window": p.window, "cell": p.scale, "channels": p.channels, "threshold": p.threshold,
            "classes": p.classes, "match_dates": p.match_dates,
            "input": "raw pairs (N, 2, C, W, W)" if p.kind == "change" else "raw pixels (N, C, W, W)"}
    entry = model.metadata_props.add()
    entry.key, entry.value = _META, json.dumps(meta)
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return Path(out)


def onnx_metadata(path: str | Path) -> dict:
    """The rsmae metadata of an exported ``.onnx`` file.

    Raises:
        WeightsError: naming ``path``, when it is not an rsmae ONNX export.
    """
    from rsmae.errors import WeightsError

    onnx = _optional("onnx")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[_META])
    except Exception as err:
        raise WeightsError(f"{path}: not an ONNX model exported by rsmae export --format onnx ({err})"
                           ) from err
