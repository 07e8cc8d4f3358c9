"""Exact mid-epoch resume for :class:`~rsmae.data.TileDataModule`.

Lightning 2.6 restores the loop counters of a checkpoint written mid-epoch, but a plain
``DataLoader`` restarts the epoch from its first batch (Lightning warns "your dataloader is not
resumable"): a resumed run would see the first batches of the epoch twice and never the last ones.
Lightning saves and restores the ``state_dict`` of every train loader that has one
(``fit_loop.state_dict()["combined_loader"]``), so the loader here records its epoch and how many
batches it has handed out, and on resume skips that many *indices* in the sampler (no tile is read
for the skipped batches). The order itself is the :class:`~rsmae.data.ShardSampler`'s: a function of
(seed, epoch, rank) only, so the resumed run sees exactly the batches the uninterrupted run would.

This belongs in ``rsmae/data`` (see the notes in :class:`ResumableTileDataModule`); it lives here
until it moves there.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Sampler

from rsmae.data import ShardDataset, TileDataModule

__all__ = ["ResumableDataLoader", "ResumableSampler", "ResumableTileDataModule", "describe_data"]

_logger = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Wrap a sampler with ``set_epoch`` so that one iteration can start ``skip`` indices in.

    Args:
        sampler: The wrapped sampler (its order depends only on its seed and epoch).
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.skip = 0

    @property
    def epoch(self) -> int:
        """The wrapped sampler's epoch."""
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped sampler."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in Lightning checkpoints.

    ``state_dict()`` holds the epoch and the number of batches handed out in it; after
    ``load_state_dict()`` the next iteration of that epoch skips those batches. ``len()`` stays the
    full epoch length, as Lightning expects of a resumed loader. Lightning asks for the state at
    ``on_train_batch_end`` without prefetching (the loader has a length), so the count is exact.
    """

    sampler: ResumableSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader needs sampler=ResumableSampler(...), got "
                f"{type(self.sampler).__name__}; if Lightning replaced it, set "
                "trainer.use_distributed_sampler: false (ShardSampler already gives each rank its own shards)"
            )
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: the body runs at the first next(), after Lightning's set_epoch().
        skip = 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == self.sampler.epoch and 0 < served < len(self):
                skip = served
                _logger.info("resuming epoch %d after batch %d", epoch, served)
        self.sampler.skip = skip * (self.batch_size or 1)
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches served in it."""
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Skip the batches already served when this epoch is iterated next."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))


def describe_data(dataset: ShardDataset) -> dict[str, Any]:
    """What a model trained on ``dataset`` must remember: bands, sensor, statistics, GSD, size.

    Returns:
        JSON-friendly ``{"bands", "sensor", "mean", "std", "gsd", "tile_size"}``; ``gsd`` is
        ``None`` when the stores differ in GSD.
    """
    gsds = sorted(set(dataset.gsd))
    return {
        "bands": list(dataset.bands),
        "sensor": dataset.sensor,
        "mean": [float(v) for v in dataset.mean],
        "std": [float(v) for v in dataset.std],
        "gsd": float(gsds[0]) if len(gsds) == 1 else None,
        "tile_size": int(dataset.tile_size),
    }


class ResumableTileDataModule(TileDataModule):
    """:class:`~rsmae.data.TileDataModule` with a resumable train loader and a ``data_info``.

    Same arguments as :class:`~rsmae.data.TileDataModule`. To fold this into ``rsmae/data``:
    give ``ShardSampler`` the ``skip`` of :class:`ResumableSampler`, return a
    :class:`ResumableDataLoader` from ``TileDataModule._loader`` for the train split, and add the
    ``data_info`` property.
    """

    @functools.cached_property
    def data_info(self) -> dict[str, Any]:
        """Bands, sensor, statistics, GSD and tile size of the stores (read before ``setup``)."""
        dataset = self.train_set if self.train_set is not None else ShardDataset(self.stores)
        return describe_data(dataset)

    def train_dataloader(self) -> DataLoader:
        """The parent's shuffled loader, made resumable."""
        return _resumable(super().train_dataloader())


def _resumable(loader: DataLoader) -> ResumableDataLoader:
    """Rebuild ``loader`` (before it was iterated) with its sampler wrapped."""
    workers = loader.num_workers
    extra: dict[str, Any] = {"prefetch_factor": loader.prefetch_factor} if workers > 0 else {}
    return ResumableDataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=ResumableSampler(loader.sampler),
        num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        persistent_workers=loader.persistent_workers, **extra,
    )
