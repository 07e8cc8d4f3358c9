"""Writes that survive a kill: the feature cache, the landscape study's JSON cache, surface rows and
files are whole or absent, their temporary names are per process, and an unreadable entry is recomputed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.evaluation.features import cached_features
from rsmae.landscape import study
from rsmae.landscape.surface import PointCache, Surface
from rsmae.models import create_encoder
from tests.conftest import ROOT

# One process computing a study cache entry: prints the temporary names it renamed onto targets.
_WRITER = """
import json, os, sys
from pathlib import Path
from rsmae.landscape import study
seen, real = [], os.replace
os.replace = lambda src, dst: seen.append(str(src)) or real(src, dst)
class Value:
    def to_dict(self):
        return {"pid": os.getpid()}
study._cached(Path(sys.argv[1]), Value, dict)
print(json.dumps(seen))
"""


class _Value:
    def __init__(self, x: int) -> None:
        self.x = x

    def to_dict(self) -> dict:
        return {"x": self.x}


@pytest.mark.slow
def test_study_cache_temporary_names_differ_between_processes(tmp_path: Path) -> None:
    names = []
    for i in range(2):
        done = subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path / f"eigen_{i}.json")], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        names += json.loads(done.stdout.splitlines()[-1])
    assert len(names) == 2 and names[0] != names[1]
    # beside their targets, never the fixed name every process used to share
    assert all(Path(n).parent == tmp_path for n in names)
    assert not {Path(n).name for n in names} & {"eigen_0.tmp", "eigen_1.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eigen_0.json", "eigen_1.json"]


def test_study_cache_recomputes_an_unreadable_entry(tmp_path: Path) -> None:
    path = tmp_path / "trace_x.json"
    path.write_text('{"x": ')  # half-written by a killed writer of the old code
    calls = []
    value = study._cached(path, lambda: calls.append(1) or _Value(3), lambda d: d)
    assert calls == [1] and value.x == 3 and json.loads(path.read_text()) == {"x": 3}
    assert study._cached(path, lambda: calls.append(1) or _Value(4), lambda d: d) == {"x": 3}
    assert calls == [1]  # the written entry is read back, not recomputed


def test_surface_rows_and_files_are_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PointCache(tmp_path, "key", {"grid": 3})
    assert json.loads((tmp_path / "key" / "config.json").read_text()) == {"grid": 3}
    real_save = np.save

    def killed(fh: object, values: np.ndarray) -> None:
        real_save(fh, values[:1])  # part of the row reached the disk, then the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.save(0, np.arange(3.0))
    monkeypatch.setattr(np, "save", real_save)
    assert cache.load(2, 3) == {} and sorted(p.name for p in cache.path.iterdir()) == ["config.json"]
    cache.save(1, np.arange(3.0))
    assert list(cache.load(2, 3)) == [1] and (cache.path / "row_0001.npy").is_file()
    surface = Surface(np.ones((2, 3)), np.arange(3.0), np.arange(2.0), {"a": 1})
    saved = surface.save(tmp_path / "surfaces" / "m__recon__seed0.npz")
    assert sorted(p.name for p in saved.parent.iterdir()) == ["m__recon__seed0.npz"]
    assert Surface.load(saved).config == {"a": 1}


def test_feature_cache_entry_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=3, img_size=32, patch_size=8)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    real_save = torch.save

    def killed(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half")  # a partial zip, then the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_features(encoder, images, backbone_digest="b", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no entry, no temporary left behind
    monkeypatch.setattr(torch, "save", real_save)
    first = cached_features(encoder, images, backbone_digest="b", cache_dir=tmp_path)
    [entry] = list(tmp_path.iterdir())
    assert entry.suffix == ".pt"
    again = cached_features(encoder, images, backbone_digest="b", cache_dir=tmp_path)
    torch.testing.assert_close(again, first)
