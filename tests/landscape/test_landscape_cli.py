"""``rsmae landscape``: one jsonargparse config style (``--config NAME``, dotted keys, --print_config)."""

from __future__ import annotations

import pytest
import yaml

from rsmae.cli import landscape as cli
from rsmae.cli.configs import resolve_config
from rsmae.landscape.config import LandscapeConfig


@pytest.fixture
def studies(monkeypatch: pytest.MonkeyPatch) -> list[LandscapeConfig]:
    """The configs the command would run (the study itself is not run)."""
    seen: list[LandscapeConfig] = []
    monkeypatch.setattr(cli, "_study", lambda values: seen.append(cli.to_config(values)) or 0)
    return seen


def test_print_config_of_the_shipped_config_is_the_old_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", "cpu-small", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == LandscapeConfig.from_yaml(resolve_config("cpu-small", "landscape")).to_dict()


def test_dotted_overrides_reach_the_config(studies: list[LandscapeConfig], tmp_path) -> None:
    out = str(tmp_path / "try")
    assert cli.main(["--config", "cpu-small", "--grid.size", "7", "--noise.enabled", "false", "--out", out,
                     "--workers", "2", "--threads", "1", "--dask", "local"]) == 0
    (cfg,) = studies
    assert (cfg.grid.size, cfg.grid.lo, cfg.noise.enabled, cfg.noise.draws) == (7, -1.0, False, 20)
    assert (cfg.out, cfg.workers, cfg.threads, cfg.dask) == (out, 2, 1, True)
    names = ("MAE", "RC-MAE", "supervised")
    assert [m.label for m in cfg.models] == [f"{n}_s{s}" for n in names for s in range(3)]  # 3 training seeds
    assert cli.main(["--config", "cpu-small", "--dask", "tcp://scheduler:8786"]) == 0
    assert studies[-1].dask == "tcp://scheduler:8786"


def test_old_flags_are_deprecated_aliases(studies: list[LandscapeConfig],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", "cpu-small", "--grid", "5", "--dask", "-v"]) == 0
    assert (studies[0].grid.size, studies[0].dask) == (5, True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --grid 5 is deprecated; use --grid.size 5",
                        "warning: a bare --dask is deprecated; use --dask local"]


@pytest.mark.parametrize("argv, message", [
    (["--config", "cpu-small", "--grid.sise", "3"], "--grid.sise"),
    (["--config", "cpu-small", "--objectives", "[hessian]"], "unknown objectives"),
    (["--config", "cpu-small", "--dask", "scheduler"], "neither 'local' nor a scheduler address"),
    (["--config", "no-such-study"], "shipped configs/landscape: cpu-small"),
    ([], "required: out, models; give --config cpu-small"),
])
def test_bad_options_are_one_error_line_and_exit_2(argv: list[str], message: str, studies: list,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    studies.clear()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and message in err and "Traceback" not in err


def test_unknown_key_in_a_config_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"out": "x", "models": [{"name": "a", "kind": "pretrain", "path": "p"}],
                                    "grid": {"sise": 3}}))
    assert cli.main(["--config", str(typo)]) == 2
    assert "error: Group 'grid' does not accept option 'sise'" in capsys.readouterr().err


def test_every_option_has_help_and_the_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser("rsmae landscape")
    assert all(action.help for action in parser._actions)
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--grid.size SIZE" in out and "(type: int, default: 21)" in out
