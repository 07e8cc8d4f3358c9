"""Progress of long loops: a tqdm bar on a terminal, periodic log lines elsewhere.

Shared by evaluation, the transfer and change grids and the landscape study (the bottom layer).

When stderr is a terminal, :class:`Progress` draws a tqdm bar there. When it is a file or a pipe (a
batch job's log, ``nohup``), a bar would write a line per redraw, so it logs an INFO line of logger
``rsmae.progress`` instead every ``every_percent`` per cent of the total or every
``every_seconds`` seconds, whichever comes first, and one at the end::

    INFO rsmae.progress: features train: 2048/21600 img (9 %), 41 s

:func:`track` wraps an iterable, :class:`StepProgress` a Lightning ``Trainer``'s training steps.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

import lightning as L
from tqdm import tqdm

__all__ = ["Progress", "StepProgress", "track"]

_logger = logging.getLogger(__name__)
T = TypeVar("T")


class Progress:
    """A progress counter shown as a bar on a terminal, else as periodic log lines.

    Args:
        total: Units expected (``None``: unknown, then time-based lines only).
        desc: What is counted, first on the bar or line (``"features train"``).
        unit: Unit name (``"img"``, ``"step"``, ``"scene"``).
        every_percent: Log a line each time this share of ``total`` is done (not on a terminal).
        every_seconds: Log a line at least this often while units complete (not on a terminal).
        stream: Where the bar goes (default ``sys.stderr``); its ``isatty()`` chooses bar or lines.
        enabled: ``False`` shows nothing.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", every_percent: float = 10.0,
                 every_seconds: float = 60.0, stream: TextIO | None = None, enabled: bool = True) -> None:
        stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.enabled = enabled
        terminal = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False) if terminal else None
        self._every_percent = every_percent
        self._every_n = total * every_percent / 100 if total else None
        self._every_seconds = every_seconds
        self._start = self._last_time = time.monotonic()
        self._last_n = 0
        self._last_total = total

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        due_n = self._every_n is not None and self.n - self._last_n >= self._every_n
        if self.enabled and (due_n or now - self._last_time >= self._every_seconds):
            self._log(now)

    def set_total(self, total: int | None) -> None:
        """Change the units expected (work found to be skipped, or more than first thought)."""
        self.total = total
        self._every_n = total * self._every_percent / 100 if total else None
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        """Close the bar, or log the final count (when it, or the total, was not the last line's)."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and (self.n != self._last_n or self.total != self._last_total):
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        self._last_n, self._last_time, self._last_total = self.n, now, self.total
        if self.total:
            count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %)"
        else:
            count = f"{self.n} {self.unit}"
        _logger.info("%s: %s, %.0f s", self.desc, count, now - self._start)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
          **kwargs: Any) -> Iterator[T]:
    """Yield from ``iterable``, counting each item in a :class:`Progress` (``total`` default its length).

    Args:
        iterable: The items.
        desc: What is counted.
        total: Items expected; default ``len(iterable)`` when it has one.
        unit: Unit name.
        **kwargs: :class:`Progress` options (``enabled``, ``every_percent``...).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, **kwargs) as progress:
        for item in iterable:
            yield item
            progress.update()


class StepProgress(L.Callback):
    """A :class:`Progress` over a ``Trainer``'s optimiser steps (use with ``enable_progress_bar=False``).

    Args:
        desc: What is trained (``"change: training"``).
        **kwargs: :class:`Progress` options.
    """

    def __init__(self, desc: str, **kwargs: Any) -> None:
        self.desc = desc
        self.kwargs = kwargs
        self.progress: Progress | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start counting towards ``max_steps`` (or the steps of ``max_epochs``)."""
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        total = int(total) if total != float("inf") else None
        self.progress = Progress(total, self.desc, unit="step", **self.kwargs)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Count the optimiser steps taken (a batch is a step unless gradients are accumulated)."""
        if self.progress is not None and trainer.global_step > self.progress.n:
            self.progress.update(trainer.global_step - self.progress.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the bar or log the last line."""
        if self.progress is not None:
            self.progress.close()
            self.progress = None
