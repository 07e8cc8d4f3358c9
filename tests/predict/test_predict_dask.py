"""Many scenes on a Dask cluster and on local processes (one scene per task): the outputs of the run in this
process, and a rerun that skips the finished scenes, on two real OSCD crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rsmae.cli import main as rsmae_main
from rsmae.predict import predict_classify, predict_embed
from tests.predict.predict_helpers import city_stack, read, tiny_backbone
from tests.predict.test_classify import tiny_classifier

distributed = pytest.importorskip("distributed")

RASTERS = {"classify": ("class_index.tif", "class_prob.tif"), "embed": ("embedding.tif",)}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many")
    return {
        "classifier": tiny_classifier(root / "classifier.safetensors"),
        "backbone": tiny_backbone(root / "backbone.safetensors"),
        "pisa": city_stack(root / "scenes" / "pisa.tif", "pisa", 1, (300, 200, 72, 100)),
        "beihai": city_stack(root / "scenes" / "beihai.tif", "beihai", 1, (100, 150, 80, 64)),
    }


@pytest.fixture(scope="module")
def expected(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The outputs of the run in this process."""
    out = tmp_path_factory.mktemp("local")
    scenes = [str(files["pisa"]), str(files["beihai"])]
    return {"classify": predict_classify(scenes, files["classifier"], out / "classify"),
            "embed": predict_embed(scenes, files["backbone"], out / "embed")}


def _assert_same(folders: list[Path], expected: list[Path], task: str) -> None:
    assert [f.name for f in folders] == [f.name for f in expected] == ["scenes__beihai", "scenes__pisa"]
    for folder, reference in zip(folders, expected, strict=True):
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
        for name in RASTERS[task]:
            got, want = read(folder / name), read(reference / name)
            assert got.shape == want.shape, (folder, name)
            assert np.allclose(got, want, atol=1e-5, equal_nan=True), (folder, name)


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.slow
def test_a_dask_cluster_gives_the_local_outputs_and_a_rerun_skips_finished_scenes(
        tmp_path: Path, files: dict[str, Path], expected: dict[str, list[Path]],
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dask"
    scenes = [str(files["pisa"]), str(files["beihai"])]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        argv = ["predict", "classify", "--model", str(files["classifier"]), *scenes, "--out",
                str(out / "classify"), "--dask", address]
        assert rsmae_main(argv) == 0
        folders = [Path(line) for line in capsys.readouterr().out.split()]
        _assert_same(folders, expected["classify"], "classify")
        _assert_same(predict_embed(scenes, files["backbone"], out / "embed", dask=address),
                     expected["embed"], "embed")
        kept = _stamps(folders[0])
        for path in folders[1].iterdir():  # a scene lost (as by a kill): redone, the finished one skipped
            path.unlink()
        folders[1].rmdir()
        assert rsmae_main(argv) == 0
    assert _stamps(folders[0]) == kept
    _assert_same(folders, expected["classify"], "classify")
    assert sorted(p.name for p in (out / "classify").iterdir()) == ["scenes__beihai", "scenes__pisa"]


@pytest.mark.slow
def test_local_processes_give_the_local_outputs(tmp_path: Path, files: dict[str, Path],
                                                expected: dict[str, list[Path]]) -> None:
    scenes = [str(files["pisa"]), str(files["beihai"])]
    folders = predict_classify(scenes, files["classifier"], tmp_path / "processes", workers=2)
    _assert_same(folders, expected["classify"], "classify")


def test_a_bad_dask_address_is_refused_before_anything_is_written(
        tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage error (the scene taken as the address)
        rsmae_main(["predict", "classify", "--model", str(files["classifier"]), "--out", str(tmp_path / "o"),
                    "--dask", str(files["pisa"])])
    assert exit_info.value.code == 2 and "neither 'local' nor a scheduler address" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
