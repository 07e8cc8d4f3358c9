"""A linear probe saved as a classifier: what ``rsmae predict classify`` runs after ``--protocol linear``.

The linear probe (:func:`~rsmae.tasks.probe.fit_head` ``"linear"``) is a BatchNorm without affine holding
the training features' statistics, then a linear layer, on the cls token of the frozen encoder (after
its final norm). In eval mode that BatchNorm is a fixed affine map, so it folds into the linear layer::

    W (x - m) / s + b  =  (W / s) x + (b - (W / s) m),    s = sqrt(var + eps)

The folded layer is the ``fc`` of a :class:`~rsmae.tasks.finetune.PooledHead` with ``pool="cls"`` (no
norm), so a probe is saved as a tuned classifier is (:func:`~rsmae.tasks.finetune.save_classifier`):
the same file, loader, ``predict classify`` and ONNX export, and the same logits up to float rounding.

Protocols without a linear head save no model, and say so (:func:`no_model_note`): ``knn``'s model is
its training features (a vote of the k nearest, not calibrated probabilities, whose cost grows with
the training set), ``head``'s MLP does not fit a :class:`~rsmae.tasks.finetune.PooledHead`. The linear
probe costs the same cached features and a few seconds of full-batch fitting, so it is the one to run.
"""

from __future__ import annotations

import torch
from torch import nn

from rsmae.tasks.finetune import FinetuneTask

__all__ = ["fold_linear_probe", "no_model_note", "probe_classifier"]

# ``FinetuneTask`` refuses a frozen encoder, so the file records the smallest tuned setting: a formality
# of the format (the encoder was not trained; the backbone's ``source`` says "linear probe")
PROBE_TUNE = "mlp"


def fold_linear_probe(probe: nn.Sequential) -> nn.Linear:
    """The linear probe ``BatchNorm1d(affine=False) -> Linear`` (eval mode) as one linear layer.

    Raises:
        ValueError: when ``probe`` is not that pair (e.g. an MLP head).
    """
    if len(probe) != 2 or not isinstance(probe[0], nn.BatchNorm1d) or not isinstance(probe[1], nn.Linear) \
            or probe[0].affine or probe[0].running_mean is None:
        raise ValueError("not a linear probe (BatchNorm1d without affine, then Linear); only fit_head "
                         "'linear' folds into one layer")
    norm, linear = probe
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    weight = linear.weight.double() * scale
    bias = linear.bias.double() - weight @ norm.running_mean.double()
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(weight.float())
        folded.bias.copy_(bias.float())
    return folded.eval()


def probe_classifier(encoder: nn.Module, probe: nn.Sequential, num_classes: int) -> FinetuneTask:
    """A classifier (eval mode) that computes ``probe(cls features of encoder(x)))`` from raw windows.

    The encoder is taken as is (it was frozen); the probe's normalisation is folded into the head.

    Args:
        encoder: The frozen encoder the probe's features came from.
        probe: A fitted linear probe (:func:`~rsmae.tasks.probe.fit_head` ``"linear"``).
        num_classes: Outputs of the probe.

    Raises:
        ValueError: when ``probe`` is not a linear probe or its outputs differ from ``num_classes``.
    """
    fc = fold_linear_probe(probe)
    if fc.out_features != num_classes:
        raise ValueError(f"the probe has {fc.out_features} outputs for {num_classes} classes")
    task = FinetuneTask(encoder, num_classes, tune=PROBE_TUNE, drop_path=0.0, pool="cls", crop_scale=None,
                        dihedral=False)
    task.head.fc.load_state_dict(fc.state_dict())
    return task.eval()


def no_model_note(protocol: str) -> str:
    """Why ``--protocol protocol --out`` saved no classifier, and which protocol to run instead."""
    why = {"knn": "k-NN fits no parametric model (its votes come from the training features themselves)",
           "head": "its MLP head on frozen features has no place in the saved classifier format"}
    reason = why.get(protocol, "it fits no head that rsmae predict classify can run")
    return (f"the {protocol} protocol saves no model: {reason}; for rsmae predict classify run rsmae "
            "evaluate --protocol linear --out DIR (the same frozen features, a linear head fitted in "
            "seconds), or a tuned protocol (mlp, lastK, full)")
