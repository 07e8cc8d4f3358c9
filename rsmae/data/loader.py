"""``ResumableDataLoader``: exact mid-epoch resume of the training loader.

Lightning 2.6 restores the loop counters of a checkpoint written mid-epoch, but a plain
``DataLoader`` restarts the epoch from its first batch (Lightning warns "your dataloader is not
resumable"): a resumed run would see the first batches of the epoch twice and never the last ones.
Lightning saves and restores the ``state_dict`` of every train loader that has one
(``fit_loop.state_dict()["combined_loader"]``), so the loader here records its epoch and how many
batches it has handed out, and on resume sets :attr:`ShardSampler.skip <rsmae.data.ShardSampler>`
to that many *indices* (no tile is read for the skipped batches). The order itself is the
:class:`~rsmae.data.ShardSampler`'s: a function of (seed, epoch, rank) only, so the resumed run sees
exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from rsmae.data.sampler import MixedBatchSampler, ShardSampler

__all__ = ["ResumableDataLoader"]

_logger = logging.getLogger(__name__)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in Lightning checkpoints.

    ``state_dict()`` holds the epoch and the number of batches handed out in it; after
    ``load_state_dict()`` the next iteration of that epoch skips those batches. ``len()`` stays the
    full epoch length, as Lightning expects of a resumed loader. Lightning asks for the state at
    ``on_train_batch_end`` without prefetching (the loader has a length), so the count is exact.

    Takes the arguments of ``DataLoader``; ``sampler`` must be a :class:`~rsmae.data.ShardSampler`, or
    ``batch_sampler`` a :class:`~rsmae.data.MixedBatchSampler` (batches of a mix of store groups).

    Raises:
        TypeError: The sampler is not a ``ShardSampler`` (nor the batch sampler a ``MixedBatchSampler``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mixed = isinstance(self.batch_sampler, MixedBatchSampler)
        self.order: ShardSampler | MixedBatchSampler = self.batch_sampler if mixed else self.sampler
        if not isinstance(self.order, ShardSampler | MixedBatchSampler):
            raise TypeError(
                "ResumableDataLoader needs sampler=ShardSampler(...) or "
                f"batch_sampler=MixedBatchSampler(...), got {type(self.sampler).__name__}; if Lightning "
                "replaced it, set "
                "trainer.use_distributed_sampler: false (ShardSampler already gives each rank its own shards)"
            )
        self._per_batch = 1 if mixed else (self.batch_size or 1)  # the order's skip counts batches / indices
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: the body runs at the first next(), after Lightning's set_epoch().
        skip = 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == self.order.epoch and 0 < served < len(self):
                skip = served
                _logger.info("resuming epoch %d after batch %d", epoch, served)
        self.order.skip = skip * self._per_batch
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches served in it."""
        return {"epoch": self.order.epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Skip the batches already served when this epoch is iterated next."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))
