"""The ``rsmae`` command: subcommands, light imports, help with defaults, shipped configs by name,
one ``--dask`` convention, quiet logs (``-v`` brings them back)."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rsmae import cli
from rsmae.cli import common, configs
from rsmae.cli import tile as tile_cli
from rsmae.errors import InputNotFoundError
from tests.conftest import EUROSAT, ROOT, load_script

RIVER = EUROSAT / "train" / "River"
PRETRAIN = ROOT / "configs" / "pretrain"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


# ---------------------------------------------------------------- dispatch and imports


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("tile", "fit", "evaluate", "export", "inspect", "report", "landscape"):
        assert f"\n  {name} " in out
    assert cli.main.__module__ == "rsmae.cli"


def test_unknown_or_missing_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["segment"])
    assert done.value.code == 2 and "invalid choice: 'segment'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main([])
    assert done.value.code == 2


def test_help_and_tile_import_no_torch(tmp_path):
    """``rsmae --help`` and ``rsmae tile`` stay light: no torch, no Lightning."""
    code = f"""
import sys
from rsmae.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
assert "torch" not in sys.modules, "rsmae --help imported torch"
rc = main(["tile", {str(RIVER / "River_1237.tif")!r}, "--band-order", "eurosat", "--tile-size", "64",
           "--out", "s.zarr"])
print("rc", rc, "torch" in sys.modules, "lightning" in sys.modules)
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "rc 0 False False"


def test_python_dash_m_and_the_pipeline_script_agree(tmp_path):
    """``python -m rsmae tile`` and ``python pipelines/tile.py`` run the same code, with the same output."""
    image = str(RIVER / "River_1237.tif")
    args = [image, "--band-order", "eurosat", "--tile-size", "64"]
    runs = [[sys.executable, "-m", "rsmae", "tile", *args, "--out", "a.zarr"],
            [sys.executable, str(ROOT / "pipelines" / "tile.py"), *args, "--out", "b.zarr"]]
    out = []
    for cmd, store in zip(runs, ("a.zarr", "b.zarr"), strict=True):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.startswith(f"{store}: 1 scenes (1 new), 1 tiles kept") and not proc.stderr
        out.append(proc.stdout.split("\n", 1)[1])  # the band table
    assert out[0] == out[1]


def test_fit_passes_through_to_the_lightning_cli(monkeypatch):
    seen = {}
    monkeypatch.setattr("rsmae.cli.pretrain.main", lambda argv, prog: seen.update(argv=argv, prog=prog) or 0)
    assert cli.main(["-v", "fit", "--config", "mae_tiny"]) == 0
    assert seen == {"argv": ["fit", "--verbose", "--config", "mae_tiny"], "prog": "rsmae"}


# ---------------------------------------------------------------- help text and conventions


@pytest.mark.parametrize("name", ["tile", "evaluate", "evaluate_change", "export", "inspect_store", "report",
                                  "landscape"])
def test_every_option_has_help(name):
    parser = importlib.import_module(f"rsmae.cli.{name}").build_parser("rsmae x")
    assert parser.prog == "rsmae x"
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        tile_cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "tile side in pixels (default: 128)" in out and "(default: lz4)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_dask_values():
    assert common.dask_target("local") is True
    assert common.dask_target("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    with pytest.raises(argparse.ArgumentTypeError, match="neither 'local' nor"):
        common.dask_target(str(RIVER))
    parsed = tile_cli.parse_args(["x.tif", "--out", "s.zarr", "--dask"])
    assert parsed.dask is True  # the bare flag of before: a local cluster
    assert tile_cli.parse_args(["x.tif", "--out", "s.zarr", "--dask", "local"]).dask is True


def test_evaluate_names_the_valid_tasks(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["evaluate", "--task", "segmentation", "--backbone", "b.safetensors", "--protocol", "knn"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'segmentation'" in err
    assert all(task in err for task in ("classification", "bigearthnet", "oscd", "levircd", "landsat"))


def test_pretrain_help_is_ours_and_lists_working_subcommands(capsys):
    pretrain = load_script("pipelines/pretrain.py")

    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    out = capsys.readouterr().out
    assert "Pretrain an MAE or RC-MAE ViT on tile stores" in out
    assert "Lightning Trainer command line tool" not in out
    assert "{fit,validate}" in out


@pytest.mark.parametrize("sub", ["predict", "test"])
def test_unsupported_lightning_subcommands_are_refused(sub, capsys):
    from rsmae.cli import pretrain

    assert pretrain.main([sub, "--config", "mae_tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sub}: not a pretraining subcommand") and "fit or validate" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- shipped configs


def test_configs_ship_with_the_package():
    root = configs.config_root()
    assert (root / "pretrain" / "mae_tiny.yaml").is_file()
    assert {"base", "mae_tiny", "rcmae_tiny"} <= set(configs.shipped_configs("pretrain"))
    assert "cpu-small" in configs.shipped_configs("landscape")


@pytest.mark.parametrize("name", ["mae_tiny", "mae_tiny.yaml", "pretrain/mae_tiny",
                                  "configs/pretrain/mae_tiny.yaml"])
def test_config_names_resolve(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/... is not a path here
    assert configs.resolve_config(name, "pretrain") == configs.config_root() / "pretrain" / "mae_tiny.yaml"
    assert configs.resolve_config("cpu-small", "landscape").parent.name == "landscape"
    assert configs.resolve_config("bench/pretrain/rs_mae", "pretrain").parent.parent.name == "bench"


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mae_tiny.yaml").write_text("trainer: {max_steps: 1}\n")
    assert configs.resolve_config("mae_tiny.yaml", "pretrain") == Path("mae_tiny.yaml")
    argv = ["fit", "--config", "mae_tiny.yaml"]
    assert configs.expand_pretrain_configs(argv) == argv  # paths as given: no base added


def test_unknown_config_lists_the_shipped_names():
    with pytest.raises(InputNotFoundError) as err:
        configs.resolve_config("mae_huge", "pretrain")
    message = str(err.value)
    assert "mae_huge" in message and "mae_tiny, mae_vit_b16_s2" in message and "bench/..." in message


def test_a_name_brings_its_base_first():
    root = configs.config_root()
    base, tiny = str(root / "pretrain" / "base.yaml"), str(root / "pretrain" / "mae_tiny.yaml")
    assert configs.expand_pretrain_configs(["fit", "--config", "mae_tiny", "--x", "1"]) == [
        "fit", "--config", base, "--config", tiny, "--x", "1"]
    assert configs.expand_pretrain_configs(["fit", "-c", "base", "--config=mae_tiny"]) == [
        "fit", "--config", base, "--config", tiny]
    given = str(PRETRAIN / "base.yaml")  # the checkout's base, as a path: not added again
    assert configs.expand_pretrain_configs(["fit", "--config", given, "-c", "mae_tiny"]) == [
        "fit", "--config", given, "--config", tiny]


def test_fit_by_name_parses_as_base_plus_override(capsys, tmp_path, monkeypatch):
    from rsmae.cli import pretrain

    def printed(*args: str) -> dict:
        with pytest.raises(SystemExit) as done:
            pretrain.main(["fit", *args, "--print_config"])
        assert done.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)

    by_path = printed("--config", str(PRETRAIN / "base.yaml"), "--config", str(PRETRAIN / "mae_tiny.yaml"))
    monkeypatch.chdir(tmp_path)
    assert printed("--config", "mae_tiny") == by_path


# ---------------------------------------------------------------- quiet logs


@pytest.mark.slow
def test_dask_chatter_only_with_verbose(tmp_path):
    base = [sys.executable, "-m", "rsmae", "tile", str(RIVER), "--band-order", "eurosat", "--tile-size", "64",
            "--workers", "2"]
    quiet = subprocess.run([*base, "--out", "q.zarr", "--dask", "local"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "20 scenes (20 new)" in quiet.stdout
    assert "INFO" not in quiet.stderr and "distributed" not in quiet.stderr, quiet.stderr
    loud = subprocess.run([*base, "--out", "v.zarr", "--dask", "-v"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "INFO distributed.scheduler" in loud.stderr


def test_logging_is_restored_after_a_command(monkeypatch):
    import logging

    root, own = logging.getLogger(), logging.getLogger("rsmae")
    lightning = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest's handlers are set aside)
    before = (root.level, lightning.level, own.level)
    with common.cli_logging(verbose=False, level=logging.INFO):
        assert (root.level, lightning.level, own.level) == (logging.WARNING, logging.WARNING, logging.INFO)
        (handler,) = root.handlers

        def record(name: str) -> logging.LogRecord:
            return logging.LogRecord(name, logging.INFO, "", 0, "chatter", None, None)

        assert not handler.filter(record("distributed.scheduler")) and handler.filter(record("rsmae.x"))
    assert root.handlers == [] and (root.level, lightning.level, own.level) == before


@pytest.mark.parametrize("verbose", [False, True])
def test_warnings_nobody_can_act_on_only_with_verbose(verbose):
    import warnings

    def body() -> int:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("Found 25 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        warnings.warn("The number of training batches (2) is smaller than the logging interval", stacklevel=1)
        return 0

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert common.run(body, verbose=verbose) == 0
    messages = [str(w.message) for w in shown]
    assert len(messages) == (3 if verbose else 1) and "logging interval" in messages[-1]


def test_a_host_keeps_its_logging_handlers():
    """Called from an application (or pytest) that configured logging, the command adds no handler."""
    import logging

    handlers = list(logging.getLogger().handlers)
    assert handlers  # pytest's
    with common.cli_logging(verbose=True):
        assert logging.getLogger().handlers == handlers
