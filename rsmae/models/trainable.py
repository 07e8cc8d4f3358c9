"""Which parts of an encoder a transfer protocol trains: frozen, last k blocks, last MLP, full.

A protocol's *tune* setting is one of:

- ``"frozen"`` (or ``0``): nothing of the encoder trains (linear probe, MLP head, frozen decoder);
- an int ``k`` with ``0 < k < depth``: the last ``k`` transformer blocks and the final norm train;
- ``"mlp"``: only the last block's MLP and the final norm train (MAE's "half block" case);
- ``"full"`` (or ``k >= depth``): everything that was trainable trains.

The same grammar names every transfer protocol (:func:`parse_protocol`, one typed :class:`Protocol`):
``knn``, ``linear`` and ``head`` fit a head on frozen features; ``frozen``, ``mlp``, ``full``, ``lastK``
or ``K`` (the K last blocks) tune the encoder that far.

Frozen means frozen: frozen parameters get ``requires_grad=False`` and frozen modules stay in eval
mode (:func:`freeze_eval`), so dropout, drop-path and any normalisation statistics of frozen parts do
not move. Fixed buffers-as-parameters (the sin-cos ``pos_embed``) never train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

from torch import nn

__all__ = [
    "FEATURE_PROTOCOLS",
    "Protocol",
    "Tune",
    "configure_trainable",
    "count_trainable",
    "freeze_eval",
    "parse_protocol",
    "parse_tune",
    "tuned_blocks",
]

Tune = str | int
FEATURE_PROTOCOLS = ("knn", "linear", "head")  # a head on frozen features: the encoder never runs twice
_SETTINGS = ("frozen", "mlp", "full")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A parsed transfer protocol.

    Attributes:
        kind: ``"knn"``, ``"linear"`` or ``"head"`` (a head on frozen features) or ``"tune"`` (the
            encoder is trained with the head as far as ``tune`` says).
        tune: ``"frozen"``, ``"mlp"``, ``"full"`` or ``K`` (the last K blocks; 0 is frozen). The
            frozen-feature kinds have ``"frozen"``.
    """

    kind: Literal["knn", "linear", "head", "tune"]
    tune: str | int

    @property
    def frozen_features(self) -> bool:
        """Whether the protocol fits a head on frozen (cacheable) features."""
        return self.kind != "tune"

    def blocks(self, depth: int) -> float | None:
        """Tuned blocks for plots: 0 frozen (``head``, ``frozen``), 0.5 ``mlp``, K, ``depth`` for ``full``.

        ``None`` for ``knn`` and ``linear``, which fit no head that could be tuned further.
        """
        if self.kind in ("knn", "linear"):
            return None
        if self.kind == "head" or self.tune == "frozen":
            return 0.0
        if isinstance(self.tune, int):
            return float(self.tune)
        return 0.5 if self.tune == "mlp" else float(depth)


def parse_protocol(protocol: str | int) -> Protocol:
    """The one grammar of transfer protocols, parsed into a :class:`Protocol`.

    ``knn``, ``linear``, ``head``, ``frozen``, ``mlp``, ``full``, ``lastK`` or ``K`` (case and surrounding
    spaces ignored; an int is ``K``).

    Raises:
        ValueError: naming the protocol and the choices.
    """
    if isinstance(protocol, int) and not isinstance(protocol, bool):
        if protocol < 0:
            raise ValueError(f"tune={protocol}: the number of tuned blocks must be >= 0")
        return Protocol("tune", protocol)
    text = str(protocol).strip().lower()
    if text in FEATURE_PROTOCOLS:
        return Protocol(text, "frozen")  # type: ignore[arg-type]
    if text in _SETTINGS:
        return Protocol("tune", text)
    if text.removeprefix("last").isdigit():  # "last2" or "2"
        return Protocol("tune", int(text.removeprefix("last")))
    raise ValueError(f"unknown protocol {protocol!r}; choose knn, linear, head, frozen, mlp, full or lastK "
                     "(the K last blocks, e.g. last2)")


def tuned_blocks(protocol: str, depth: int) -> float | None:
    """:meth:`Protocol.blocks` of a protocol name, ``None`` also for a name that is no protocol (tables)."""
    try:
        return parse_protocol(protocol).blocks(depth)
    except ValueError:
        return None


def parse_tune(tune: Tune, depth: int) -> str | int:
    """Canonical tune setting: ``"frozen"``, ``"mlp"``, ``"full"`` or ``k`` in ``1..depth-1``.

    Raises:
        ValueError: naming the setting and the choices.
    """
    choices = f"tune={tune!r}; choose 'frozen', 'mlp', 'full' or a number of last blocks"
    try:
        setting = parse_protocol(tune)
    except ValueError:
        if isinstance(tune, int) and not isinstance(tune, bool):
            raise  # a negative number of blocks, said as such
        raise ValueError(choices) from None
    if setting.frozen_features:
        raise ValueError(choices)
    if isinstance(setting.tune, int):
        return "frozen" if setting.tune == 0 else "full" if setting.tune >= depth else setting.tune
    return setting.tune


def _final_norms(encoder: nn.Module) -> Iterator[nn.Module]:
    for name in ("norm", "fc_norm"):
        module = getattr(encoder, name, None)
        if isinstance(module, nn.Module):
            yield module


def configure_trainable(encoder: nn.Module, tune: Tune) -> int:
    """Set ``requires_grad`` on a timm ViT for ``tune``; return the number of trainable parameters.

    Args:
        encoder: A timm ``VisionTransformer`` (``blocks``, ``norm``/``fc_norm``).
        tune: See the module docstring.

    Returns:
        Trainable parameter count of the encoder after the change.
    """
    blocks = list(encoder.blocks)
    setting = parse_tune(tune, len(blocks))
    fixed = {id(p) for n, p in encoder.named_parameters() if n == "pos_embed" and not p.requires_grad}
    for param in encoder.parameters():
        param.requires_grad_(False)
    if setting == "full":
        trainable: list[nn.Module] = [encoder]
    elif setting == "mlp":
        trainable = [blocks[-1].mlp, *_final_norms(encoder)]
    elif setting == "frozen":
        trainable = []
    else:
        trainable = [*blocks[-int(setting):], *_final_norms(encoder)]
    for module in trainable:
        for param in module.parameters():
            if id(param) not in fixed:
                param.requires_grad_(True)
    return count_trainable(encoder)


def count_trainable(module: nn.Module) -> int:
    """Number of parameters of ``module`` with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def freeze_eval(module: nn.Module) -> nn.Module:
    """Put every submodule without a trainable parameter in eval mode (call after ``.train()``).

    A module counts as frozen when none of its own or its children's parameters train and it has
    parameters or buffers; parameter-free containers of trainable parts keep their mode.

    Returns:
        ``module``, for chaining.
    """
    for sub in module.modules():
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            sub.eval()
        elif not params and any(True for _ in sub.buffers()):
            sub.eval()
    return module
