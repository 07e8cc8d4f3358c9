"""The grids' typed config: every shipped grid reads into a GridConfig; an unknown key is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsmae.errors import RsmaeError
from rsmae.experiments import GridBlock, GridConfig, load_config, plan_cells
from tests.conftest import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_read_into_typed_configs(path: Path) -> None:
    config = load_config(path)
    assert config.grid and all(isinstance(b, GridBlock) for b in config.grid)
    assert Path(config.cells_dir).is_absolute() and config.config_path == str(path)
    if config.data:
        assert Path(config.data["train_root"]).is_absolute()
    cells = plan_cells(config)
    assert cells and {c["seed"] for c in cells} == set(config.seeds)
    assert config.is_change == ("dataset" in cells[0])


def test_an_unknown_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_text("inits: [random]\nseeds: [0]\ngrid: [{protocols: [knn], fractions: ['100%']}]\n"
                   "workerz: 2\n")
    with pytest.raises(RsmaeError, match=r"grid\.yaml: unknown keys \['workerz'\]"):
        load_config(bad)
    config = GridConfig.from_dict({"grid": [{"protocols": ["frozen"], "datasets": ["oscd"], "inits": ["x"]}],
                                   "seeds": [0], "inits": ["a", "b"], "task": "change"})
    assert plan_cells(config) == [{"init": "x", "protocol": "frozen", "dataset": "oscd", "seed": 0}]
