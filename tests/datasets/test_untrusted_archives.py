"""An archive's member names are data: a preparation script never writes outside its ``--out``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, load_script

TIN = DATA / "tinyimagenet64_subset" / "tinyimagenet64_subset.npz"


tinyimagenet = load_script("datasets/tinyimagenet/prepare.py")


def _archive(path: Path, names: list[str]) -> Path:
    """A tiny Tiny-ImageNet-shaped archive: real images of the subset, the given ``train_files``."""
    with np.load(TIN) as data:
        images = data["x_train"][: len(names)]
    np.savez(path, x_train=images, y_train=np.arange(len(names), dtype=np.int16),
             train_files=np.array(names))
    return path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_well_formed_archive_is_written_under_out(tmp_path: Path) -> None:
    npz = _archive(tmp_path / "ok.npz", ["train/n01/images/n01_0.JPEG", "train/n02/images/n02_7.JPEG"])
    assert tinyimagenet.main([str(npz), "--out", str(tmp_path / "out")]) == 0
    assert _files(tmp_path / "out") == ["n01/n01_0.png", "n02/n02_7.png"]


@pytest.mark.parametrize("member", [
    "train/../images/escape.JPEG",  # class folder ".."
    "train/n01/images/...JPEG",  # stem ".."
    "/n01/images/abs.JPEG",  # absolute
    "images/x.JPEG",  # no class folder: an empty name
    "train\\..\\images\\x.JPEG",  # Windows separators
    "train/n01/../../../images/x.JPEG",
])
def test_member_escaping_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, member: str) -> None:
    npz = _archive(tmp_path / "bad.npz", ["train/n01/images/n01_0.JPEG", member])
    out = tmp_path / "work" / "out"
    assert tinyimagenet.main([str(npz), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(npz) in err and "train_files[1]" in err and repr(member) in err
    assert _files(tmp_path) == ["bad.npz"]  # nothing written, inside --out or beside it


def test_archive_missing_an_array_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    npz = tmp_path / "empty.npz"
    np.savez(npz, x_train=np.zeros((1, 64, 64, 3), np.uint8))
    assert tinyimagenet.main([str(npz), "--out", str(tmp_path / "out")]) == 2
    assert "y_train" in capsys.readouterr().err
