"""Loss landscapes and flatness of MAE, RC-MAE, probe and supervised ViTs (METHOD.md, "Loss landscape").

Pure functions of (model, deterministic loss, fixed batches): seeded filter-normalised directions
(:mod:`~rsmae.landscape.directions`), objectives evaluated with ``torch.func.functional_call``
(:mod:`~rsmae.landscape.objectives`), 1D/2D surfaces batched with ``vmap``, cached per row and
distributable (:mod:`~rsmae.landscape.surface`), Hessian eigenvalues and trace
(:mod:`~rsmae.landscape.hessian`), Gaussian-noise flatness (:mod:`~rsmae.landscape.noise`).
"""

from rsmae.landscape.directions import (
    ParamDict,
    add_directions,
    filter_normalize,
    fingerprint,
    model_direction,
    random_direction,
    stack_points,
    trainable_params,
)
from rsmae.landscape.hessian import (
    EigenResult,
    HessianOperator,
    TraceResult,
    hutchinson_trace,
    top_eigenvalues,
)
from rsmae.landscape.noise import NoiseResult, noise_flatness
from rsmae.landscape.objectives import (
    ClassificationObjective,
    MAEObjective,
    Objective,
    ProbeObjective,
    RCMAEObjective,
)
from rsmae.landscape.surface import (
    PointCache,
    RowTask,
    Surface,
    batched_losses,
    compute_surface,
    dask_map,
    evaluate_points,
    grid,
    interpolate_models,
    process_map,
)

__all__ = [
    "ClassificationObjective",
    "EigenResult",
    "HessianOperator",
    "MAEObjective",
    "NoiseResult",
    "Objective",
    "ParamDict",
    "PointCache",
    "ProbeObjective",
    "RCMAEObjective",
    "RowTask",
    "Surface",
    "TraceResult",
    "add_directions",
    "batched_losses",
    "compute_surface",
    "dask_map",
    "evaluate_points",
    "filter_normalize",
    "fingerprint",
    "grid",
    "hutchinson_trace",
    "interpolate_models",
    "model_direction",
    "noise_flatness",
    "process_map",
    "random_direction",
    "stack_points",
    "top_eigenvalues",
    "trainable_params",
]
