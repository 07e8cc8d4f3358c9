"""Packaging: every package and config in the wheel, every direct import declared, and the wheel
installed into a fresh virtual environment outside the checkout runs ``rsmae --help``, a tiny
``rsmae tile`` and a tiny ``rsmae fit --config mae_tiny``."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import EUROSAT, ROOT
from tests.tasks.pretrain_helpers import shipped_config

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RIVER = EUROSAT / "train" / "River"  # 20 real EuroSAT images, one 64-px tile each


def _declared() -> set[str]:
    """Normalised distribution names of ``[project] dependencies``, extras included (dask[distributed])."""
    names = set()
    for req in PYPROJECT["project"]["dependencies"]:
        name, _, extras = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", req).group(1, 0, 2)
        names.add(name)
        names.update(e.strip() for e in (extras or "").split(",") if e.strip())
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}


def test_every_package_is_listed():
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rsmae").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed == packages | {"rsmae.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"rsmae.configs": "configs"}


def test_every_direct_import_is_declared():
    modules = set()
    for path in (ROOT / "rsmae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = sorted(modules - set(sys.stdlib_module_names) - {"rsmae", "__future__"})
    by_module = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {m: by_module.get(m) for m in third_party
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in by_module.get(m, [m])} & declared}
    assert not missing, f"imported by rsmae/ but not in [project] dependencies: {missing}"
    assert "omegaconf" in declared  # used through LightningCLI's parser_mode omegaconf+, not imported


def test_the_console_script_is_installed():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="rsmae")
    assert script.value == "rsmae.cli:main"


def _run(cmd: list, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the checkout's packaged files (no build/ left in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("rsmae", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("rsmae-*.whl")
    return wheel


def _fresh_venv(venv: Path, wheel: Path) -> dict[str, str]:
    """A new venv holding only the wheel; the test environment's dependencies reached by a .pth file."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", wheel], cwd=venv.parent)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv.parent)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site.stdout.strip(), "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


def _fit_overrides(work: Path) -> list[str]:
    """A user's override of the shipped callbacks when the probe points at data absent here."""
    callbacks = shipped_config("mae_tiny")["trainer"]["callbacks"]
    probe = next((c for c in callbacks if c["class_path"].endswith("ProbeCallback")), None)
    root = probe and probe.get("init_args", {}).get("root")
    if not root or (work / root).exists():
        return []
    override = work / "no_probe.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"callbacks": [c for c in callbacks if c is not probe]}}))
    return ["--config", override]


@pytest.mark.slow
def test_wheel_runs_in_a_fresh_venv_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"rsmae/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs <= names and "rsmae/cli/__init__.py" in names and "rsmae/__main__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt")
    assert "rsmae = rsmae.cli:main" in entry_points.decode()

    env = _fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "work"
    work.mkdir()
    code = "import rsmae, rsmae.cli.configs as c; print(rsmae.__file__, c.config_root())"
    where = _run(["python", "-c", code], work, env).stdout.split()
    assert all(p.startswith(str(tmp_path / "venv")) for p in where), where  # the wheel, not the checkout
    assert "fit" in _run(["rsmae", "--help"], work, env).stdout
    assert "usage: rsmae" in _run(["python", "-m", "rsmae", "--help"], work, env).stdout

    tiled = _run(["rsmae", "tile", RIVER, "--band-order", "eurosat", "--tile-size", "64", "--out", "s.zarr"],
                 work, env)
    assert tiled.stdout.startswith("s.zarr: 20 scenes (20 new), 20 tiles kept")

    fit = _run(["rsmae", "fit", "--config", "mae_tiny", *_fit_overrides(work), "--data.stores", "[s.zarr]",
                "--data.num_workers", "0", "--data.batch_size", "8", "--model.preset", "vit_test",
                "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", "run"], work, env)
    assert (work / "run" / "logs" / "version_0" / "backbone.safetensors").is_file()
    assert "val/loss" in (work / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    for noise in ("GPU available", "TPU available", "Tip:", "Seed set", "LightningCLI's args"):
        assert noise not in fit.stdout + fit.stderr, fit.stderr
