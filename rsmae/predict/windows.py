"""The streaming window scan: read a strip, predict its windows in batches, blend, write finished rows.

The scene is cut into ``window`` x ``window`` windows at ``stride`` (the last window of a row or
column moved back to end at the border, as :func:`rsmae.evaluation.sliding.window_starts` does).
Windows are read one strip of rows at a time, each strip in pieces of about ``chunk`` px width (so a
20k px wide scene is not read 20k px at a time), the next piece read in a background thread while
the model runs on the current one. They are predicted in batches of ``batch`` windows (across
strips), and blended with the cosine weights of :func:`rsmae.evaluation.sliding.blend_window` into
a buffer one window high. Rows no later window touches are written out as soon as the scan moves
past them, so memory holds two pieces of a strip and one window-high buffer whatever the scene's
height (the buffer is as wide as the scene: ``channels`` x ``window / scale`` cells).

Outputs live on a grid of *cells* of ``scale`` x ``scale`` pixels (the patch size for embeddings,
1 for per-pixel maps): a cell is nodata when any input pixel in it is nodata (NaN in any band of
any date), or when no window covered it. Windows that hold no valid pixel are not predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rsmae.evaluation.sliding import blend_window, window_starts

__all__ = ["ScanSpec", "scan"]

Reader = Callable[[int, int, int, int], np.ndarray]  # (row, col, height, width) -> (C, h, w), NaN nodata
Predict = Callable[[np.ndarray], np.ndarray]  # (N, T, C, w, w) -> (N, K, w/scale, w/scale)
Emit = Callable[[int, np.ndarray], None]  # (first cell row, (K, n, width cells) NaN nodata)


@dataclass(frozen=True)
class ScanSpec:
    """How a scene is cut.

    Attributes:
        window: Window side in pixels (the model's input size).
        stride: Pixels between window starts (``window - overlap``).
        scale: Pixels per output cell (a divisor of ``window`` and ``stride``).
        batch: Windows per model call.
        chunk: Pixels of a strip read at a time (rounded to whole windows, at least one).
    """

    window: int
    stride: int
    scale: int = 1
    batch: int = 16
    chunk: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.window:
            raise ValueError(f"stride {self.stride} must be in 1..window ({self.window}): overlap < window")
        if self.window % self.scale or self.stride % self.scale:
            raise ValueError(f"window {self.window} and stride {self.stride} must be multiples of the "
                             f"cell size {self.scale} (the patch size): choose another --overlap")

    def cells(self, height: int, width: int) -> tuple[int, int]:
        """Output size in cells of a ``height`` x ``width`` px scene (partial cells dropped)."""
        return height // self.scale, width // self.scale


class _Blender:
    """A window-high buffer of weighted sums; rows the scan has left are emitted."""

    def __init__(self, channels: int, spec: ScanSpec, rows: int, cols: int, emit: Emit) -> None:
        self.win = spec.window // spec.scale
        self.rows, self.cols, self.emit = rows, cols, emit
        width = max(cols, self.win)
        self.weight = blend_window(self.win).numpy() if self.win > 1 else np.ones((1, 1), np.float32)
        self.total = np.zeros((channels, self.win, width), np.float32)
        self.norm = np.zeros((self.win, width), np.float32)
        self.valid = np.zeros((self.win, width), bool)
        self.base = 0

    def advance(self, row: int) -> None:
        """Emit rows above ``row`` (a new strip's first cell row)."""
        n = min(row - self.base, self.win)
        if n > 0:
            self._flush(n)
            self.total[:, :-n] = self.total[:, n:].copy()
            self.norm[:-n] = self.norm[n:].copy()
            self.total[:, -n:] = 0
            self.norm[-n:] = 0
        self.base = row

    def validate(self, col: int, valid: np.ndarray) -> None:
        """Take the valid cells ``(win, n)`` of the current strip from cell column ``col``."""
        self.valid[:, col:col + valid.shape[1]] = valid

    def add(self, col: int, out: np.ndarray) -> None:
        """Add one window's output ``(K, win, win)`` at cell column ``col`` of the current strip."""
        w = self.weight
        self.total[:, :, col:col + self.win] += out * w
        self.norm[:, col:col + self.win] += w

    def _flush(self, n: int) -> None:
        n = min(n, self.rows - self.base)
        if n <= 0:
            return
        norm = self.norm[:n, :self.cols]
        ok = self.valid[:n, :self.cols] & (norm > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.total[:, :n, :self.cols] / norm
        out[:, ~ok] = np.nan
        self.emit(self.base, out)

    def finish(self) -> None:
        """Emit the rows left in the buffer."""
        self._flush(self.win)


def _pieces(starts: list[int], win: int, stride: int, chunk: int) -> list[list[int]]:
    """Window column starts grouped into pieces of about ``chunk`` px (whole windows, at least one)."""
    per = max(1, (chunk - win) // stride + 1)
    return [starts[i:i + per] for i in range(0, len(starts), per)]


def _strips(readers: Sequence[Reader], spec: ScanSpec, height: int, width: int) -> Iterator[tuple]:
    """Events in scan order: ``("strip", cell_row)``, then per piece its valid cells and windows.

    A piece gives ``("valid", cell_col, cells)`` and its ``("window", cell_col, array)``; the next
    piece is read in a thread while these are used.
    """
    rows_c, cols_c = spec.cells(height, width)
    h, w, s = rows_c * spec.scale, cols_c * spec.scale, spec.scale
    win = spec.window
    pieces = _pieces(window_starts(w, win, spec.stride), win, spec.stride, spec.chunk)
    jobs = [(r, cols) for r in window_starts(h, win, spec.stride) for cols in pieces]

    def load(job: tuple[int, list[int]]) -> np.ndarray:
        r, cols = job
        return np.stack([read(r, cols[0], win, cols[-1] + win - cols[0]) for read in readers])

    with ThreadPoolExecutor(1, thread_name_prefix="scan-read") as pool:
        ahead = pool.submit(load, jobs[0])
        for i, (r, cols) in enumerate(jobs):
            piece = ahead.result()  # (T, C, win, span of the piece)
            if i + 1 < len(jobs):
                ahead = pool.submit(load, jobs[i + 1])
            if cols is pieces[0]:
                yield "strip", r // s
            good = ~np.isnan(piece).any(axis=(0, 1))
            span = good.shape[1] // s * s
            yield "valid", cols[0] // s, good[:, :span].reshape(win // s, s, span // s, s).all(axis=(1, 3))
            for c in cols:
                window = piece[..., c - cols[0]:c - cols[0] + win]
                if good[:, c - cols[0]:c - cols[0] + win].any():
                    yield "window", c // s, window


def scan(readers: Sequence[Reader], predict: Predict, spec: ScanSpec, *, height: int, width: int,
         channels: int, emit: Emit, on_batch: Callable[[int], None] | None = None) -> None:
    """Predict a scene window by window and emit its blended output rows in order.

    Args:
        readers: One reader per date, each ``(row, col, h, w) -> (C, h, w)`` float32, NaN = nodata,
            NaN outside the scene.
        predict: The model: ``(N, T, C, window, window)`` float32 (NaN pixels included: the model
            fills them) to ``(N, K, window/scale, window/scale)``.
        spec: Window, stride, cell size, batch and piece width.
        height: Scene height in pixels.
        width: Scene width in pixels.
        channels: ``K``, the model's output channels.
        emit: Called with (first cell row, ``(K, n, width cells)`` float32, NaN = nodata), rows in order.
        on_batch: Called with the number of windows after each model call (progress).
    """
    rows_c, cols_c = spec.cells(height, width)
    blender = _Blender(channels, spec, rows_c, cols_c, emit)
    events: list[tuple] = []
    pending: list[np.ndarray] = []

    def run_batch() -> None:
        outputs = iter(predict(np.stack(pending)) if pending else ())
        for event in events:
            if event[0] == "strip":
                blender.advance(event[1])
            elif event[0] == "valid":
                blender.validate(event[1], event[2])
            else:
                blender.add(event[1], next(outputs))
        if on_batch is not None and pending:
            on_batch(len(pending))
        events.clear()
        pending.clear()

    for event in _strips(readers, spec, height, width):
        if event[0] == "window":
            pending.append(event[2])
            event = event[:2]
        events.append(event)
        if len(pending) == spec.batch:
            run_batch()
    run_batch()
    blender.finish()
