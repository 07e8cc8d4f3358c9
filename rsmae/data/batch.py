"""``TileBatch``: the samples of one ``ShardDataset.__getitems__`` call, collated once.

A DataLoader worker calls ``__getitems__`` with a batch of indices and hands the result to the
collate function. Building one dict per sample and stacking them again costs tens of microseconds
per sample in Python; a :class:`TileBatch` holds the batch's tensors already stacked (the images
in shared memory inside a worker, so they reach the main process without a copy) and is still a
sequence of sample dicts for code that indexes it. :func:`~rsmae.data.collate_tiles` returns its
tensors as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["TileBatch", "batch_tensor", "batch_tensors"]


def batch_tensor(shape: tuple[int, ...], dtype: np.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised tensor and its NumPy view; in shared memory inside a DataLoader worker.

    Args:
        shape: Tensor shape.
        dtype: NumPy dtype (any that torch has).
    """
    tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype)
    if get_worker_info() is not None:  # sent to the main process: allocate it where it is sent from
        tensor.share_memory_()
    return tensor, tensor.numpy()


def batch_tensors(n: int, tile_shape: tuple[int, ...], dtype: np.dtype) -> dict[str, torch.Tensor]:
    """Uninitialised ``image``, ``gsd``, ``label``, ``index`` tensors of a batch, views of one storage.

    Inside a DataLoader worker the storage is in shared memory. One storage per batch is one
    transfer to the main process instead of one per tensor: each shared storage is passed as its
    own file descriptor, and with four of them the transport alone halved the samples/s of
    64 px uint8 batches (measured on a 2-core EPYC).

    Args:
        n: Batch size.
        tile_shape: ``(C, H, W)``.
        dtype: NumPy dtype of the images.
    """
    dtype = np.dtype(dtype)
    image_bytes = n * int(np.prod(tile_shape)) * dtype.itemsize
    gsd_at = -(-image_bytes // 8) * 8  # 8-byte aligned views after the images
    label_at = gsd_at + -(-4 * n // 8) * 8
    index_at = label_at + 8 * n
    buffer, _ = batch_tensor((index_at + 8 * n,), np.dtype(np.uint8))
    image_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return {"image": buffer[:image_bytes].view(image_dtype).view(n, *tile_shape),
            "gsd": buffer[gsd_at : gsd_at + 4 * n].view(torch.float32),
            "label": buffer[label_at:index_at].view(torch.int64),
            "index": buffer[index_at:].view(torch.int64)}


class TileBatch(Sequence[dict[str, Any]]):
    """A batch of tiles that is also the sequence of its samples.

    Args:
        tensors: ``image`` ``(B, C, H, W)``, ``gsd`` ``(B,)`` float32, ``label`` and ``index``
            ``(B,)`` int64.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["index"])

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        """Sample ``i``: ``image`` (a view into the batch), ``gsd`` (0-d tensor), ``label``, ``index``."""
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        t = self.tensors
        return {"image": t["image"][i], "gsd": t["gsd"][i], "label": int(t["label"][i]),
                "index": int(t["index"][i])}
