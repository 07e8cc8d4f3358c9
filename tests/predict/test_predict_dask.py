"""Many scenes on a Dask cluster and on local processes (one scene per task): the outputs of the run in this
process, and a rerun that skips the finished scenes, on two real OSCD crops."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsmae.cli import main as rsmae_main
from rsmae.predict import predict_classify, predict_embed
from tests.predict.predict_helpers import assert_same_outputs, tiny_backbone, two_cities
from tests.predict.test_classify import tiny_classifier

distributed = pytest.importorskip("distributed")



@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many")
    return {
        "classifier": tiny_classifier(root / "classifier.safetensors"),
        "backbone": tiny_backbone(root / "backbone.safetensors"),
        **two_cities(root),
    }


@pytest.fixture(scope="module")
def expected(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The outputs of the run in this process."""
    out = tmp_path_factory.mktemp("local")
    scenes = [str(files["pisa"]), str(files["beihai"])]
    return {"classify": predict_classify(scenes, files["classifier"], out / "classify"),
            "embed": predict_embed(scenes, files["backbone"], out / "embed")}


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
        assert_same_outputs(folders, expected["classify"], "classify")
        assert_same_outputs(predict_embed(scenes, files["backbone"], out / "embed", dask=address),
                     expected["embed"], "embed")
        kept = _stamps(folders[0])
        for path in folders[1].iterdir():  # a scene lost (as by a kill): redone, the finished one skipped
            path.unlink()
        folders[1].rmdir()
        assert rsmae_main(argv) == 0
    assert _stamps(folders[0]) == kept
    assert_same_outputs(folders, expected["classify"], "classify")
    assert sorted(p.name for p in (out / "classify").iterdir()) == ["scenes__beihai", "scenes__pisa"]


@pytest.mark.slow
def test_local_processes_give_the_local_outputs(tmp_path: Path, files: dict[str, Path],
                                                expected: dict[str, list[Path]]) -> None:
    scenes = [str(files["pisa"]), str(files["beihai"])]
    folders = predict_classify(scenes, files["classifier"], tmp_path / "processes", workers=2)
    assert_same_outputs(folders, expected["classify"], "classify")


def test_a_bad_dask_address_is_refused_before_anything_is_written(
        tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage error (the scene taken as the address)
        rsmae_main(["predict", "classify", "--model", str(files["classifier"]), "--out", str(tmp_path / "o"),
                    "--dask", str(files["pisa"])])
    assert exit_info.value.code == 2 and "neither 'local' nor a scheduler address" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
