"""What a new user hits on a fresh machine: the environment's imports."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import LANDSAT, ROOT

TORCHGEO_SAMPLE = f"""
import torchgeo.datasets
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler, Units

class Landsat8(RasterDataset):
    filename_glob = {LANDSAT.name!r}
    all_bands = ("B2", "B3", "B4")
    separate_files = False

ds = Landsat8([{str(LANDSAT.parent)!r}], bands=["B2", "B3", "B4"])
batch = stack_samples([ds[q] for q in RandomGeoSampler(ds, size=32, length=2, units=Units.PIXELS)])
print(tuple(batch["image"].shape))
"""


def test_torchgeo_datasets_and_samplers_work() -> None:
    """``import torchgeo.datasets`` (it needs ``requests``) and a RasterDataset sample, in a new process."""
    proc = subprocess.run([sys.executable, "-c", TORCHGEO_SAMPLE], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "(2, 3, 32, 32)"


def test_torchgeo_datasets_dependency_declared() -> None:
    """A fresh ``make install`` (pyproject) and ``environment.yml`` both bring ``requests``."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert block, "pyproject.toml has no [project] dependencies"
    names = {m.lower() for m in re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block.group(1), re.M)}
    assert {"torchgeo", "requests"} <= names
    assert re.search(r"^\s*- requests\b", (ROOT / "environment.yml").read_text(), re.MULTILINE)
