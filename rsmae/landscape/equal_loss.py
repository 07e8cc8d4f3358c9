"""Runs compared at equal training loss: each run's checkpoint nearest a common loss level (issue 21).

At an equal budget of samples a larger batch takes fewer steps and ends at a higher loss, nearer its
initialisation, so a flatter landscape there is partly an earlier point of training. Comparing the
snapshots of equal training loss separates the two: each run's checkpoints along training
(``checkpoints/step<N>.ckpt``, kept by :func:`with_checkpoints`) are read against its training-loss
log (``metrics.csv`` of the CSV logger, ``train/loss``), and the checkpoint whose loss is nearest the
level is measured.

- training loss at a step: the mean of the last ``window`` logged values at or before it (5, as
  the sweep's ``final_loss``: one logged value is one noisy batch);
- the level: a configured one, else the worst (highest) final loss among the runs, which every run
  reached at some point;
- the snapshot: the checkpoint whose training loss is nearest the level (the earlier on a tie),
  recorded with its step, its loss and the gap to the level.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsmae.errors import LandscapeError
from rsmae.tasks.report import read_metrics

__all__ = ["Snapshot", "checkpoints", "choose_snapshot", "common_level", "loss_at", "training_curve",
           "with_checkpoints"]

LOSS_KEYS = ("train/loss", "train/loss_step")  # as Lightning names an on_step metric
_STEP_FILE = re.compile(r"step(\d+)(?:-v\d+)?\.ckpt$")


@dataclass(frozen=True)
class Snapshot:
    """The checkpoint of one run chosen at the common level.

    Attributes:
        step: Optimizer step of the checkpoint.
        loss: Training loss there (mean of the last ``window`` logged values).
        path: The checkpoint.
        level: The common level it was chosen for.
    """

    step: int
    loss: float
    path: Path
    level: float


def training_curve(folder: str | Path) -> list[tuple[int, float]]:
    """``[(step, training loss)]`` of a run folder's ``metrics.csv``, in logged order.

    Raises:
        LandscapeError: no ``metrics.csv`` or no training loss in it.
    """
    folder = Path(folder)
    if not (folder / "metrics.csv").is_file():
        raise LandscapeError(f"{folder}: no metrics.csv; the run was not logged with the CSV logger")
    curves = read_metrics(folder)
    for key in LOSS_KEYS:
        if curves.get(key):
            return curves[key]
    raise LandscapeError(f"{folder / 'metrics.csv'}: no {' or '.join(LOSS_KEYS)} column; "
                         f"found {sorted(curves)}")


def loss_at(curve: Sequence[tuple[int, float]], step: int, window: int = 5) -> float:
    """Mean of the last ``window`` logged losses at or before ``step`` (``nan`` when none)."""
    values = [v for s, v in curve if s <= step][-window:]
    return sum(values) / len(values) if values else float("nan")


def checkpoints(folder: str | Path, final_step: int | None = None) -> dict[int, Path]:
    """``step -> checkpoint`` of ``folder/checkpoints/step<N>.ckpt``; ``last.ckpt`` is ``final_step``'s."""
    found: dict[int, Path] = {}
    ckpt_dir = Path(folder) / "checkpoints"
    for path in sorted(ckpt_dir.glob("step*.ckpt")):
        match = _STEP_FILE.search(path.name)
        if match:
            found.setdefault(int(match.group(1)), path)
    last = ckpt_dir / "last.ckpt"
    if final_step is not None and last.is_file():
        found.setdefault(final_step, last)
    return dict(sorted(found.items()))


def common_level(finals: Mapping[str, float], level: float | None = None) -> float:
    """``level`` if given, else the worst (highest) final training loss among the runs."""
    if level is not None:
        return float(level)
    if not finals:
        raise LandscapeError("no run has a final training loss; give equal_loss.level")
    return float(max(finals.values()))


def choose_snapshot(curve: Sequence[tuple[int, float]], ckpts: Mapping[int, Path], level: float, *,
                    window: int = 5) -> Snapshot:
    """The checkpoint whose training loss (:func:`loss_at`) is nearest ``level``; the earlier on a tie.

    Raises:
        LandscapeError: no checkpoint with a logged loss before it.
    """
    scored = [(abs(loss - level), step, loss) for step in sorted(ckpts)
              if (loss := loss_at(curve, step, window)) == loss]  # loss == loss: not nan
    if not scored:
        raise LandscapeError(f"no checkpoint among steps {sorted(ckpts)} has a logged training loss at or "
                             "before it")
    _, step, loss = min(scored)
    return Snapshot(step, loss, Path(ckpts[step]), level)


def with_checkpoints(recipe: Mapping[str, Any], every: int, *, weights_only: bool = True) -> dict[str, Any]:
    """A pretraining config (parsed YAML) that keeps a checkpoint every ``every`` optimizer steps.

    The recipe's ``ModelCheckpoint`` callback gets ``every_n_train_steps: every``, ``save_top_k: -1``
    (keep them all; ``save_last`` stays) and ``save_weights_only`` (a ViT-Tiny MAE's weights are about
    30 MB, three times that with the optimizer state); one is added, named ``step<N>``, when the recipe
    has none. Everything else is left as it is.
    """
    if every < 1:
        raise LandscapeError(f"checkpoint_every={every}; give a positive number of steps")
    out = copy.deepcopy(dict(recipe))
    trainer = out.setdefault("trainer", {})
    callbacks = trainer.setdefault("callbacks", [])
    found = [c for c in callbacks if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    if not found:
        found = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"filename": "step{step:07d}", "auto_insert_metric_name": False,
                                "save_last": True}}]
        callbacks.append(found[0])
    for callback in found:
        callback.setdefault("init_args", {}).update(every_n_train_steps=int(every), save_top_k=-1,
                                                    save_weights_only=weights_only)
    return out
