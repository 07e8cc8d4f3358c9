"""Stores of different band sets in one datamodule (issue 24): real Sentinel-2 (EuroSAT, 13 bands) and
Landsat 8 (B2, B3, B4) stores; each batch from one group, the mix ratio kept, exact mid-epoch resume."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.data import MixedBatchSampler, ShardDataset, ShardSampler, TileDataModule, mix_weights
from rsmae.data.sampler import apportion
from rsmae.errors import BandError
from tests.data.mixed_helpers import tile_landsat

L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def landsat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tile_landsat(tmp_path_factory.mktemp("landsat"))


def _module(eurosat: Path, landsat: Path, mix: dict | None = None, batch_size: int = 4,
            seed: int = 0) -> TileDataModule:
    dm = TileDataModule({"s2": [str(eurosat)], "landsat": [str(landsat)]}, batch_size=batch_size,
                        num_workers=0, seed=seed, mix=mix)
    dm.setup("fit")
    return dm


def _groups(loader: torch.utils.data.DataLoader) -> list[str]:
    return [batch["group"] for batch in loader]


def test_stores_of_different_bands_form_groups(eurosat_store: Path, landsat_store: Path) -> None:
    dm = TileDataModule([str(landsat_store), str(eurosat_store)], batch_size=4, num_workers=0)
    assert dm.groups == {"landsat-oli": [str(landsat_store)], "s2-l1c": [str(eurosat_store)]} and dm.mixed
    info = dm.data_info  # the first group's, every group listed
    assert info["bands"] == ["B2", "B3", "B4"] and info["sensor"] == "landsat-oli" and info["gsd"] == 30.0
    landsat, s2 = info["groups"]
    assert (landsat["tiles"], s2["tiles"]) == (24, 270) and s2["bands"] == L1C and s2["gsd"] == 10.0
    assert landsat["weight"] == pytest.approx(24 / 294) and s2["weight"] == pytest.approx(270 / 294)
    assert s2["mean"] == pytest.approx(ShardDataset(eurosat_store).mean.tolist())
    assert not TileDataModule([str(eurosat_store)], num_workers=0).mixed  # one band set: as before


def test_mix_and_tile_sizes_are_checked(eurosat_store: Path, landsat_store: Path,
                                        bigearthnet_store: Path) -> None:
    with pytest.raises(ValueError, match=r"store groups are \['s2', 'landsat'\].*missing: \['landsat'\]"):
        _module(eurosat_store, landsat_store, mix={"s2": 1.0, "modis": 1.0})  # setup reads data_info
    with pytest.raises(ValueError, match="not all 0"):
        mix_weights({"s2": 0, "landsat": 0}, {"s2": 1, "landsat": 1})
    dm = TileDataModule([str(eurosat_store), str(bigearthnet_store)], num_workers=0)
    with pytest.raises(BandError, match=r"eurosat.zarr\): 64 px.*bigearthnet.zarr\): 60 px.*one tile_size"):
        dm.setup("fit")


def test_every_batch_comes_from_one_group_with_its_info(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 1})
    infos = {g["name"]: g for g in dm.data_info["groups"]}
    offsets = dict(zip(("s2", "landsat"), dm.mixed_train.offsets.tolist(), strict=False))
    seen = Counter()
    for batch in dm.train_dataloader():
        group = batch["group"]
        seen[group] += 1
        info, part = infos[group], dm.mixed_train.parts[list(infos).index(group)]
        assert batch["bands"] == [f"{info['sensor']}:{b}" for b in info["bands"]]
        assert batch["image"].shape == (4, len(info["bands"]), 64, 64)
        assert batch["image"].dtype == torch.uint16  # native: normalised on the device by the task
        assert batch["mean"] == info["mean"] and batch["std"] == info["std"]
        assert torch.all(batch["gsd"] == info["gsd"])
        local = batch["index"].numpy() - offsets[group]
        assert ((local >= 0) & (local < len(part))).all()  # every index of the batch in that group
        raw = torch.stack([part[i]["image"] for i in local.tolist()])
        assert torch.equal(batch["image"], raw)
    assert set(seen) == {"s2", "landsat"} and abs(seen["s2"] - seen["landsat"]) <= 1  # 1:1 of 59


def test_mix_ratio_is_respected_over_many_batches(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 3})
    loader = dm.train_dataloader()
    assert len(dm.mixed_train.parts[0]) == 216 and len(dm.mixed_train.parts[1]) == 20  # EuroSAT test: val
    assert len(loader) == 216 // 4 + 20 // 4  # the full batches the groups hold
    groups: list[str] = []
    for epoch in range(4):
        loader.batch_sampler.set_epoch(epoch)
        order = _groups(loader)
        assert Counter(order) == {"landsat": 44, "s2": 15}  # 3:1 of 59, exact in every epoch
        groups += order
    assert groups[:59] != groups[59:118]  # a new order each epoch
    share = np.mean([g == "landsat" for g in groups])
    assert share == pytest.approx(0.75, abs=0.01)  # 236 batches
    firsts = [np.mean([g == "landsat" for g in groups[k : k + 20]]) for k in range(0, 236, 59)]
    assert all(abs(f - 0.75) <= 0.25 for f in firsts)  # mixed along the epoch, not in blocks
    loader.batch_sampler.set_epoch(0)
    landsat = [b["index"].tolist() for b in loader if b["group"] == "landsat"]
    first_pass = sorted(i for batch in landsat[:5] for i in batch)  # 20 tiles: each once, then again
    assert first_pass == list(range(216, 236))
    again = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 3}).train_dataloader()
    assert _groups(again) == groups[:59]  # the seed decides
    other = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 3}, seed=1).train_dataloader()
    assert _groups(other) != groups[:59]


def test_default_mix_follows_tile_counts(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store)
    assert Counter(_groups(dm.train_dataloader())) == {"s2": 54, "landsat": 5}  # weights 270 : 24
    assert apportion([0.5, 0.25, 0.25], 7) == [3, 2, 2] and apportion([1 / 3] * 3, 10) == [4, 3, 3]


def test_resume_mid_epoch_gives_the_same_remaining_batches(eurosat_store: Path, landsat_store: Path) -> None:
    def loader(epoch: int) -> torch.utils.data.DataLoader:
        dm = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 1}, batch_size=8)
        out = dm.train_dataloader()
        out.batch_sampler.set_epoch(epoch)
        return out

    for epoch, stop in ((0, 7), (1, 12)):
        full = [(b["group"], b["index"].tolist()) for b in loader(epoch)]
        first = loader(epoch)
        head = [(b["group"], b["index"].tolist()) for b in itertools.islice(first, stop)]
        state = first.state_dict()
        assert state == {"epoch": epoch, "batches": stop} and head == full[:stop]
        resumed = loader(epoch)
        resumed.load_state_dict(state)
        rest = [(b["group"], b["index"].tolist()) for b in resumed]
        assert rest == full[stop:] and len(resumed) == len(full)
        assert {g for g, _ in rest} == {"s2", "landsat"}


def test_validation_reads_every_held_out_tile_once(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store, batch_size=16)
    batches = list(dm.val_dataloader())
    indices = [i for b in batches for i in b["index"].tolist()]
    assert sorted(indices) == list(range(len(dm.mixed_val))) and len(indices) == len(set(indices))
    groups = [b["group"] for b in batches]
    assert groups == sorted(groups, key=["s2", "landsat"].index)  # group after group
    for b in batches:
        assert b["image"].shape[1] == (13 if b["group"] == "s2" else 3)


def test_ranks_share_the_group_order_and_split_the_tiles(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store, mix={"s2": 1, "landsat": 1})
    parts, offsets = dm.mixed_train.parts, dm.mixed_train.offsets[:-1].tolist()

    def batches(rank: int) -> list[list[int]]:
        samplers = [ShardSampler(p, seed=0, num_replicas=2, rank=rank, buffer_shards=2) for p in parts]
        return list(MixedBatchSampler(samplers, offsets, [1, 1], batch_size=4, seed=0))

    zero, one = batches(0), batches(1)
    assert len(zero) == len(one) == 216 // 2 // 4 + 20 // 2 // 4
    group = [[int(np.searchsorted(offsets, b[0], side="right")) - 1 for b in r] for r in (zero, one)]
    assert group[0] == group[1]  # each step trains one band set on every rank
    s2 = [set(i for b, g in zip(r, group[0], strict=True) if g == 0 for i in b) for r in (zero, one)]
    assert not s2[0] & s2[1]  # disjoint shards per rank


def test_a_batch_across_groups_is_refused(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _module(eurosat_store, landsat_store)
    with pytest.raises(ValueError, match="span groups.*MixedBatchSampler"):
        dm.mixed_train.__getitems__([0, len(dm.mixed_train) - 1])
