"""ShardDataset, ShardSampler and TileDataModule over real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rsmae.data import (
    ResumableDataLoader,
    ShardDataset,
    ShardSampler,
    TileDataModule,
    collate_tiles,
    normalize_images,
    split_scenes,
)
from rsmae.errors import BandError, StoreError, StoreIncompleteError
from rsmae.store import TileStore


def test_samples_normalised_with_store_statistics(eurosat_store: Path) -> None:
    ds = ShardDataset(eurosat_store)
    assert len(ds) == 270 and ds.bands[8] == "B8A" and len(ds.classes) == 10
    sample = ds[3]
    assert sample["image"].shape == (13, 64, 64) and sample["image"].dtype == torch.float32
    raw = ShardDataset(eurosat_store, normalize=False)[3]["image"]
    expected = (raw - torch.tensor(ds.mean, dtype=torch.float32)[:, None, None]) / torch.tensor(
        ds.std, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close(sample["image"], expected)
    batch = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert batch.mean(dim=(0, 2, 3)).abs().max() < 1e-3  # stats are the data's own
    assert sample["label"] == ds.classes.index(ds.scene_id(3).split("/")[0])
    assert float(sample["gsd"]) == 10.0
    georef = ds.georef(3)
    assert georef["scene"] == ds.scene_id(3) and georef["window"] == (0, 0, 64, 64)
    assert "EPSG" in georef["crs"] or "UTM" in georef["crs"]


def test_fast_reader_equals_zarr(eurosat_store: Path) -> None:
    store = TileStore.open(eurosat_store)
    slots = store.index()[::7]
    reader = store.tile_reader()
    np.testing.assert_array_equal(reader.read(slots), store.read_tiles(slots))
    np.testing.assert_array_equal(reader.read(slots[::-1]), store.read_tiles(slots[::-1]))  # any order


def test_getitems_matches_getitem(bigearthnet_store: Path) -> None:
    ds = ShardDataset(bigearthnet_store)
    items = ds.__getitems__([5, 0, 17, 5])
    for i, item in zip([5, 0, 17, 5], items, strict=True):
        torch.testing.assert_close(item["image"], ds[i]["image"])


def test_band_mismatch_is_an_error(eurosat_store: Path, bigearthnet_store: Path) -> None:
    with pytest.raises(BandError, match="do not match"):
        ShardDataset([eurosat_store, bigearthnet_store])
    with pytest.raises(BandError):
        ShardDataset(eurosat_store, bands=["B04", "B03", "B02"])
    ShardDataset([eurosat_store, eurosat_store])  # same bands: read as one


def test_incomplete_and_missing_stores_refused(tmp_path: Path, eurosat_store: Path) -> None:
    with pytest.raises(StoreError, match="no tile store"):
        ShardDataset(tmp_path / "none.zarr")
    import shutil
    copy = tmp_path / "copy.zarr"
    shutil.copytree(eurosat_store, copy)
    TileStore.open(copy, mode="r+").update_attrs(complete=False)
    with pytest.raises(StoreIncompleteError, match="rerun the same"):
        ShardDataset(copy)


def test_sampler_reads_whole_shards_and_splits_ranks(eurosat_store: Path) -> None:
    ds = ShardDataset(eurosat_store)
    sampler = ShardSampler(ds, buffer_shards=1, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds)))
    shards = [ds.shard_of(i) for i in order]
    changes = sum(a != b for a, b in zip(shards, shards[1:], strict=False))
    assert changes == len(set(shards)) - 1  # each shard is read in one stretch
    assert list(ShardSampler(ds, seed=3)) == list(ShardSampler(ds, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != order
    ranks = [list(ShardSampler(ds, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 135
    shards_by_rank = [{ds.shard_of(i) for i in r} for r in ranks]
    assert not shards_by_rank[0] & shards_by_rank[1] or len(set(ranks[0]) & set(ranks[1])) < 32


def test_dataloader_with_workers(eurosat_store: Path) -> None:
    ds = ShardDataset(eurosat_store)
    loader = DataLoader(ds, batch_size=32, sampler=ShardSampler(ds), num_workers=2,
                        collate_fn=collate_tiles)
    batches = list(loader)
    assert batches[0]["image"].shape == (32, 13, 64, 64) and batches[0]["gsd"].shape == (32,)
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(ds)))


def test_datamodule_splits_by_scene(eurosat_store: Path) -> None:
    dm = TileDataModule([str(eurosat_store)], batch_size=16, num_workers=0)
    dm.setup("fit")
    train = {dm.train_set.scene_id(i) for i in range(len(dm.train_set))}
    val = {dm.val_set.scene_id(i) for i in range(len(dm.val_set))}
    assert not train & val and len(val) == 54  # EuroSAT's own test folder is the val split
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 13, 64, 64)


def test_split_by_hash_is_stable() -> None:
    records = [{"id": f"scene/{i}", "split": None} for i in range(200)]
    train, val = split_scenes(records, 0.1, seed=0)
    assert 5 < len(val) < 40 and not set(train) & set(val)
    train2, val2 = split_scenes(records + [{"id": "scene/new", "split": None}], 0.1, seed=0)
    assert set(val) <= set(val2)  # adding scenes does not move old ones


def test_native_images_normalised_on_device_equal(eurosat_store: Path) -> None:
    ds = ShardDataset(eurosat_store)
    native = ShardDataset(eurosat_store, native=True)
    batch = collate_tiles(native.__getitems__([0, 9, 4]))
    assert batch["image"].dtype == torch.uint16
    out = normalize_images(batch["image"], torch.tensor(ds.mean), torch.tensor(ds.std))
    torch.testing.assert_close(out, torch.stack([ds[i]["image"] for i in (0, 9, 4)]))


def test_sampler_skip_drops_the_start_of_one_iteration(eurosat_store: Path) -> None:
    sampler = ShardSampler(ShardDataset(eurosat_store), seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip = 40
    assert list(sampler) == full[40:] and len(sampler) == len(full) == 270
    assert sampler.skip == 0 and list(sampler) == full  # reset after one iteration
    sampler.skip = 1000
    assert list(sampler) == []


class _CountingDataset(ShardDataset):
    """Records every index it reads."""

    def __getitems__(self, indices: list[int]) -> list[dict]:
        self.read.extend(int(i) for i in indices)
        return super().__getitems__(indices)


def _resumable(ds: ShardDataset, epoch: int, workers: int = 0) -> ResumableDataLoader:
    sampler = ShardSampler(ds, seed=7)
    sampler.set_epoch(epoch)
    return ResumableDataLoader(ds, batch_size=16, sampler=sampler, collate_fn=collate_tiles,
                               drop_last=True, num_workers=workers, persistent_workers=workers > 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_skips_the_batches_served(eurosat_store: Path, workers: int) -> None:
    ds = ShardDataset(eurosat_store, native=True)
    straight = [b["index"].tolist() for b in _resumable(ds, epoch=1)]
    assert len(straight) == 270 // 16
    first = _resumable(ds, epoch=1)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    counting = _CountingDataset(eurosat_store, native=True)
    counting.read = []
    resumed = _resumable(counting, epoch=1, workers=workers)
    resumed.load_state_dict(state)
    assert len(resumed) == len(straight)  # len() stays the full epoch
    rest = [b["index"].tolist() for b in resumed]
    assert rest == straight[3:]
    assert resumed.state_dict() == {"epoch": 1, "batches": len(straight)}
    if workers == 0:  # the skipped tiles are never read
        assert sorted(counting.read) == sorted(i for b in straight[3:] for i in b)
    assert [b["index"].tolist() for b in resumed] == straight  # the next iteration is whole again
    other = _resumable(ds, epoch=2)
    other.load_state_dict(state)  # a state of another epoch skips nothing
    assert len(list(other)) == len(straight)


def test_resumable_loader_needs_a_shard_sampler(eurosat_store: Path) -> None:
    with pytest.raises(TypeError, match="use_distributed_sampler"):
        ResumableDataLoader(ShardDataset(eurosat_store), batch_size=4)


def test_datamodule_native_batches_equal_float_batches_after_the_task(eurosat_store: Path) -> None:
    from rsmae.tasks import PretrainTask

    native, plain = (TileDataModule([str(eurosat_store)], batch_size=16, num_workers=0, native=n)
                     for n in (True, False))
    assert native.hparams.native is True and TileDataModule([str(eurosat_store)]).hparams.native is True
    for dm in (native, plain):
        dm.setup("fit")
    assert isinstance(native.train_dataloader(), ResumableDataLoader)
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, data_info=native.data_info)
    for split in ("train_dataloader", "val_dataloader"):
        raw = next(iter(getattr(native, split)()))
        expected = next(iter(getattr(plain, split)()))
        assert raw["image"].dtype == torch.uint16 and expected["image"].dtype == torch.float32
        assert torch.equal(raw["index"], expected["index"])
        out = task.on_after_batch_transfer(raw, 0)  # no trainer: normalised, nothing else
        assert out["image"].dtype == torch.float32 and "mask_noise" not in out
        torch.testing.assert_close(out["image"], expected["image"])
        stats = [torch.tensor(native.data_info[k]) for k in ("mean", "std")]
        torch.testing.assert_close(normalize_images(raw["image"], *stats), expected["image"])
    floats = task.on_after_batch_transfer(expected, 0)
    assert floats["image"] is expected["image"]  # float batches pass untouched
    bare = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13)
    with pytest.raises(ValueError, match="data_info"):
        bare.on_after_batch_transfer(raw, 0)


def test_getitems_is_a_collated_batch_and_a_sequence_of_samples(eurosat_store: Path) -> None:
    from torch.utils.data import default_collate

    from rsmae.data.batch import TileBatch

    ds = ShardDataset(eurosat_store)
    picks = [7, 250, 3, 7]  # several shards, a repeat
    batch = ds.__getitems__(picks)
    assert isinstance(batch, TileBatch) and len(batch) == 4 and len(batch[1:3]) == 2
    storages = {t.untyped_storage().data_ptr() for t in batch.tensors.values()}
    assert len(storages) == 1  # one storage: one transfer per batch from a DataLoader worker
    stacked = collate_tiles(batch)  # passed through, already stacked
    assert stacked["image"].shape == (4, 13, 64, 64) and stacked["index"].tolist() == picks
    one_by_one = [ds[i] for i in picks]
    torch.testing.assert_close(stacked["image"], torch.stack([s["image"] for s in one_by_one]))
    assert batch[2]["label"] == one_by_one[2]["label"] and float(batch[2]["gsd"]) == 10.0
    plain = default_collate(list(batch))  # any collate function still works on the samples
    torch.testing.assert_close(plain["image"], stacked["image"])
    assert torch.equal(collate_tiles(one_by_one)["label"], stacked["label"])
    raw = ShardDataset(eurosat_store, normalize=False).__getitems__(picks)
    native = ShardDataset(eurosat_store, native=True).__getitems__(picks)
    assert raw.tensors["image"].dtype == torch.float32
    assert torch.equal(raw.tensors["image"], native.tensors["image"].float())
    store = TileStore.open(eurosat_store)
    expected = store.read_tiles(ds.table[picks, 1]).astype(np.float32)
    np.testing.assert_array_equal(raw.tensors["image"].numpy(), expected)  # the tiles zarr reads


def test_batches_across_stores_equal_single_reads(eurosat_store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "second.zarr"
    shutil.copytree(eurosat_store, copy)
    both = ShardDataset([eurosat_store, copy], native=True)
    picks = [3, 270 + 3, 100, 270 + 269]  # store 0, store 1, store 0, store 1
    batch = collate_tiles(both.__getitems__(picks))
    single = ShardDataset(eurosat_store, native=True)
    expected = collate_tiles(single.__getitems__([3, 3, 100, 269]))["image"]
    assert torch.equal(batch["image"], expected) and batch["index"].tolist() == picks


def test_one_normalisation_for_batches_pairs_and_single_images(eurosat_store: Path) -> None:
    ds = ShardDataset(eurosat_store, normalize=False)
    image = ds[0]["image"]  # (C, H, W) digital numbers
    expected = (image - torch.tensor(ds.mean, dtype=torch.float32)[:, None, None]) / torch.tensor(
        ds.std, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close(normalize_images(image, list(ds.mean), list(ds.std)), expected)
    pair = torch.stack([image, image])[None]  # (1, 2 dates, C, H, W)
    torch.testing.assert_close(normalize_images(pair, ds.mean, ds.std)[0, 1], expected)
    with pytest.raises(ValueError, match="12 means / 12 stds for images of 13 bands"):
        normalize_images(image, ds.mean[:12], ds.std[:12])


def test_split_ignores_the_rows_of_skipped_scenes() -> None:
    columns = {"id": np.array(["a", "", "b", "c"]), "split": np.array(["", "", "", "val"])}
    train, val = split_scenes(columns, 0.5, seed=0)
    assert (train, val) == (["a", "b"], ["c"])
    train, val = split_scenes({"id": np.array(["", "x"]), "split": np.array(["", ""])}, 0.0, seed=0)
    assert (train, val) == (["x"], [])
