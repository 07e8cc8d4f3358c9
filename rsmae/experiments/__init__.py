"""Experiments: grids of cells over inits, protocols, label fractions or datasets, and seeds.

- :mod:`~rsmae.experiments.config`: the grid's typed config (:class:`GridConfig`) read from its YAML;
- :mod:`~rsmae.experiments.cells`: the plan of cells, their result files, fingerprints and resume;
- :mod:`~rsmae.experiments.grid`: one evaluation per cell, run over :func:`rsmae.parallel.parallel_map`
  (local processes or Dask) or one at a time (SLURM arrays);
- :mod:`~rsmae.experiments.inits`: the manifest of backbones the cells start from;
- :mod:`~rsmae.experiments.backbones`: the transfer benchmark's corpora and pretrainings;
- :mod:`~rsmae.experiments.runs`: pretraining runs resumed through their ``run.json``;
- :mod:`~rsmae.experiments.leaks`: no evaluation image in a pretraining corpus.

``benchmarks/`` holds the entry points and the table writers; tables are assembled from whatever cells
are done (:func:`~rsmae.experiments.cells.read_cells`).
"""

from rsmae.experiments.cells import cell_path, fingerprint, is_done, plan_cells, read_cells
from rsmae.experiments.config import GridBlock, GridConfig, load_config
from rsmae.experiments.grid import run_cell, run_grid
from rsmae.experiments.inits import LABELS, add_external, grid_manifest, manifest_from_paths

__all__ = ["LABELS", "GridBlock", "GridConfig", "add_external", "cell_path", "fingerprint",
           "grid_manifest", "is_done", "load_config", "manifest_from_paths", "plan_cells", "read_cells",
           "run_cell", "run_grid"]
