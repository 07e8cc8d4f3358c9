"""Which parts of an encoder a transfer protocol trains: frozen, last k blocks, last MLP, full.

A protocol's *tune* setting is one of:

- ``"frozen"`` (or ``0``): nothing of the encoder trains (linear probe, MLP head, frozen decoder);
- an int ``k`` with ``0 < k < depth``: the last ``k`` transformer blocks and the final norm train;
- ``"mlp"``: only the last block's MLP and the final norm train (MAE's "half block" case);
- ``"full"`` (or ``k >= depth``): everything that was trainable trains.

Frozen means frozen: frozen parameters get ``requires_grad=False`` and frozen modules stay in eval
mode (:func:`freeze_eval`), so dropout, drop-path and any normalisation statistics of frozen parts do
not move. Fixed buffers-as-parameters (the sin-cos ``pos_embed``) never train.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["Tune", "configure_trainable", "count_trainable", "freeze_eval", "parse_tune"]

Tune = str | int


def parse_tune(tune: Tune, depth: int) -> str | int:
    """Canonical tune setting: ``"frozen"``, ``"mlp"``, ``"full"`` or ``k`` in ``1..depth-1``.

    Raises:
        ValueError: naming the setting and the choices.
    """
    if isinstance(tune, str) and tune.isdigit():
        tune = int(tune)
    if isinstance(tune, int) and not isinstance(tune, bool):
        if tune < 0:
            raise ValueError(f"tune={tune}: the number of tuned blocks must be >= 0")
        return "frozen" if tune == 0 else "full" if tune >= depth else tune
    if tune in ("frozen", "mlp", "full"):
        return tune
    raise ValueError(f"tune={tune!r}; choose 'frozen', 'mlp', 'full' or a number of last blocks")


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
