"""Loader benchmark, parts 2-3: ``ShardDataset`` vs torchgeo samples/s, MB/s and memory.

Each loader kind is measured in a child process: ``Child`` starts ``bench_loader.py --_child
loader``, whose ``main`` runs ``serve(loader_child)``.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loader_common import BATCH, REPO, RSMAE_KINDS, S2_BANDS, SceneSet

ENTRY = Path(__file__).resolve().with_name("bench_loader.py")  # the script the children run


class ChainedEpochs:
    """A sampler that chains epochs of ``base`` (calling ``set_epoch``) up to ``length`` indices."""

    def __init__(self, base: Any, length: int) -> None:
        self.base = base
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        produced, epoch = 0, 0
        while True:
            self.base.set_epoch(epoch)
            epoch += 1
            for index in self.base:
                if produced >= self.length:
                    return
                yield index
                produced += 1


def _proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _proc_pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 if unavailable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child_pids(parent: int) -> list[int]:
    """Live child processes of ``parent`` (scanning ``/proc``; psutil is not needed)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.split("/")[2]))
    return pids


def _torchgeo_dataset(spec: dict[str, Any]) -> Any:
    """The torchgeo ``RasterDataset`` over a scene set's files (one multi-band file, or band folders)."""
    from torchgeo.datasets import RasterDataset

    inputs = spec["inputs"]
    if spec["bands"] is not None:  # one multi-band file holding exactly these bands
        class OneFile(RasterDataset):
            filename_glob = Path(inputs[0]).name
            is_image = True
            separate_files = False
            all_bands = tuple(spec["bands"])

        return OneFile([str(Path(inputs[0]).parent)], bands=list(spec["bands"]))

    class OSCDScenes(RasterDataset):
        filename_glob = "*_B02.tif"
        filename_regex = r"^.+_(?P<band>B\d[\dA])\.tif$"
        is_image = True
        separate_files = True
        all_bands = S2_BANDS

    return OSCDScenes(list(inputs), bands=list(S2_BANDS))


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rsmae_collate() -> tuple[Callable[[list[Any]], Any], str]:
    """The collate function rsmae's own DataModule uses (``collate_tiles``), else the default."""
    import rsmae.data

    collate = getattr(rsmae.data, "collate_tiles", None)
    if collate is not None:
        return collate, "rsmae.data.collate_tiles"
    from torch.utils.data import default_collate

    return default_collate, "torch default_collate"


def loader_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one loader in this process (a loader server); returns throughput and memory.

    The dataset, sampler and DataLoader (and so its workers) are new for every measurement; the
    main process's peak RSS is reset first, so each measurement reports its own peak.
    """
    import torch
    from torch.utils.data import DataLoader

    workers, seconds, max_samples = spec["workers"], spec["seconds"], spec["samples"]
    tile = spec["tile"]
    torch.set_num_threads(spec["consumer_threads"])  # the main process; workers use 1 anyway
    import rsmae.data  # noqa: F401  (imports counted in the baseline RSS below)

    if spec["loader"] == "torchgeo":
        import torchgeo.datasets  # noqa: F401
    rss_imports = _proc_status(os.getpid(), "VmRSS")
    peak_reset = _reset_peak_rss()
    length = max_samples + BATCH * (4 + 4 * max(1, workers))  # never runs dry before the stop
    finish = None  # what the consumer does to a batch before using it (timed)
    if spec["loader"] in RSMAE_KINDS:
        from rsmae.data.dataset import ShardDataset, normalize_images
        from rsmae.data.sampler import ShardSampler

        native = spec["loader"] == "rsmae-native"
        ds = ShardDataset(spec["store"], native=native)
        if native:  # uint16 between processes, normalised by the consumer (on the device in training)
            mean, std = torch.as_tensor(ds.mean), torch.as_tensor(ds.std)
            finish = functools.partial(normalize_images, mean=mean, std=std)
        collate, collate_name = rsmae_collate()
        loader = DataLoader(ds, batch_size=BATCH, sampler=ChainedEpochs(ShardSampler(ds), length),
                            num_workers=workers, collate_fn=collate)
        spec = {**spec, "collate": collate_name}
    else:
        import torchgeo as tg
        from torchgeo.datasets import stack_samples
        from torchgeo.samplers import RandomGeoSampler, Units

        ds = _torchgeo_dataset(spec)
        sampler = RandomGeoSampler(ds, size=tile, length=length, units=Units.PIXELS)
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=workers,
                            collate_fn=stack_samples)
        spec = {**spec, "torchgeo": tg.__version__, "collate": "torchgeo stack_samples"}
    it = iter(loader)
    first = next(it)["image"]  # warm-up batch: excluded
    dtype = str(first.dtype)
    if finish is not None:
        first = finish(first)
    if tuple(first.shape[-2:]) != (tile, tile):
        raise RuntimeError(f"{spec['loader']}: got {tuple(first.shape)} batches, not {tile}x{tile}")
    samples = nbytes = 0
    started = time.perf_counter()
    for batch in it:
        image = batch["image"]
        if finish is not None:
            image = finish(image)
        samples += image.shape[0]
        nbytes += image.element_size() * image.nelement()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or samples >= max_samples:
            break
    me = os.getpid()
    pids = [me, *_child_pids(me)]
    hwm = sum(_proc_status(p, "VmHWM") for p in pids)
    pss = sum(_proc_pss(p) for p in pids)
    del it
    return {**spec, "samples": samples, "seconds_timed": elapsed, "samples_per_s": samples / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "peak_rss_mb": hwm / 1e6, "pss_mb": pss / 1e6,
            "processes": len(pids), "rss_imports_mb": rss_imports / 1e6, "dtype": dtype,
            "channels": int(first.shape[1]), "torch_threads": torch.get_num_threads(),
            "peak_reset": peak_reset}


_RESULT = "RESULT "


def serve(task: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Child main loop: one JSON spec per stdin line, one ``RESULT`` JSON line per spec."""
    for line in sys.stdin:
        if line.strip():
            print(_RESULT + json.dumps(task(json.loads(line))), flush=True)


class Child:
    """A benchmark child process (started once: torch imports cost seconds) fed specs by pipe."""

    def __init__(self, kind: str) -> None:
        cmd = [sys.executable, str(ENTRY), "--_child", kind]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO, bufsize=1)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Send one spec; wait for its result."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT):])
        raise RuntimeError(f"benchmark child exited with {self.proc.wait()} on {spec}")

    def close(self) -> None:
        """End the child (closing its stdin ends its loop)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def bench_loaders(sets: Sequence[SceneSet], stores: dict[str, Path], args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """Both loaders on every scene set, interleaved over repeats.

    Each loader kind lives in its own child process (rsmae's never imports torchgeo); the two
    children take turns, so that a slow spell of a shared machine hits both.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ours = Child("loader")  # both rsmae kinds share a process that never imports torchgeo
    children = {"rsmae": ours, "rsmae-native": ours, "torchgeo": Child("loader")}
    kinds = list(children)
    try:
        for rep, s in ((rep, s) for rep in range(args.repeats) for s in sets):
            order = kinds[rep % 3:] + kinds[:rep % 3]
            for loader in order:
                spec = {"loader": loader, "dataset": s.name,
                        "store": str(stores[s.name]), "inputs": list(s.inputs), "tile": s.tile,
                        "bands": list(s.bands) if s.band_order else None,
                        "workers": args.workers, "seconds": args.seconds, "samples": args.samples,
                        "consumer_threads": args.consumer_threads}
                res = children[loader].run(spec)
                runs.setdefault((s.name, loader), []).append(res)
                print(f"  loader {s.name} {loader} repeat {rep + 1}: {res['samples_per_s']:.0f} "
                      f"samples/s, peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        for child in {id(c): c for c in children.values()}.values():
            child.close()
    rows = []
    for s in sets:
        for loader in kinds:
            r = runs[(s.name, loader)]
            rows.append({"dataset": s.name, "loader": loader, "workers": args.workers, "tile": s.tile,
                         "channels": r[0]["channels"], "dtype": r[0]["dtype"],
                         "collate": r[0]["collate"],
                         **{k: [x[k] for x in r] for k in
                            ("samples_per_s", "mb_per_s", "peak_rss_mb", "pss_mb", "samples",
                             "rss_imports_mb")}})
        b = runs[(s.name, "torchgeo")]
        for kind in RSMAE_KINDS:
            a = runs[(s.name, kind)]
            ratios = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(a, b, strict=True)]
            rows.append({"dataset": s.name, "loader": "ratio", "of": kind, "workers": args.workers,
                         "ratio": ratios})
    return rows

