"""rsmae: remote-sensing self-supervised pretraining (tiling, MAE / RC-MAE, transfer).

``import rsmae`` is light (no torch): tiling workers import only what they use. The backbone
helpers below are loaded on first access.

``import rsmae`` is also enough for ``timm.create_model("rsmae_vit_small")`` (and for rebuilding a
torchgeo checkpoint that names an rsmae model). Registering the models imports torch, so it waits for
timm, which imports torch anyway: when timm is already imported, :mod:`rsmae.models` (which registers
them) is imported now; otherwise a one-shot import hook imports it right after timm has finished
importing. timm 1.0 has no plugin mechanism (entry points) for third-party models, so this hook is the
one import-time effect of rsmae: it adds a finder that does nothing until timm is imported, then
removes itself. A process that never imports timm never imports torch through rsmae.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BackboneMeta": "rsmae.models.weights",
    "load_backbone": "rsmae.models.weights",
    "save_backbone": "rsmae.models.weights",
}

__all__ = ["BackboneMeta", "__version__", "load_backbone", "save_backbone"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsmae' has no attribute {name!r}")


def _register_timm_models() -> None:
    """Import :mod:`rsmae.models`, whose ``@register_model`` factories register the rsmae timm models.

    A failure is logged, never raised: importing timm must not fail because of rsmae.
    """
    try:
        importlib.import_module("rsmae.models")
    except Exception:
        logging.getLogger(__name__).warning("the rsmae timm models are not registered: importing "
                                            "rsmae.models failed", exc_info=True)


class _AfterTimm(importlib.abc.Loader):
    """Runs timm's own loader, then registers the rsmae models."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # timm keeps its own loader
        self.loader.exec_module(module)
        _register_timm_models()


class _TimmHook(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that wraps the loader of the top-level ``timm`` package, once."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is None or spec.loader is None:
            return None
        spec.loader = _AfterTimm(spec.loader)
        return spec


if "timm" in sys.modules:
    _register_timm_models()
elif not any(isinstance(finder, _TimmHook) for finder in sys.meta_path):
    sys.meta_path.insert(0, _TimmHook())
