"""The inits of a grid: the manifest of backbone files a grid's cells start from.

A manifest is ``{init: {path, sha256, steps, corpus, images, scenes, ...}}``: built by
:func:`rsmae.experiments.backbones.build_backbones` (the transfer benchmark's pretrainings), or given
as paths in the config (:func:`manifest_from_paths`), plus converted foreign weights
(:func:`add_external`) and, for change detection, the from-scratch reference row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsmae.errors import RsmaeError
from rsmae.experiments.backbones import build_backbones, load_manifest, save_random_backbone
from rsmae.experiments.cells import plan_cells
from rsmae.experiments.config import ROOT, GridConfig
from rsmae.files import atomic_write_json, read_json

__all__ = ["LABELS", "MissingInitsError", "add_external", "grid_manifest", "manifest_from_paths",
           "manifest_table", "summary_rows"]

LABELS = {"random": "random init", "natural_mae": "natural-image MAE (Tiny-ImageNet)",
          "natural_rs_mae": "natural MAE -> in-domain MAE", "rs_mae": "our MAE (Sentinel-2)",
          "rs_rcmae": "our RC-MAE (Sentinel-2)", "demo_mae": "demo MAE (make demo)",
          "official_mae": "official ImageNet MAE", "timm": "timm ViT weights",
          "torchgeo": "torchgeo ViT weights"}


def _newest(pattern: str) -> Path:
    glob = any(c in pattern for c in "*?[")
    matches = sorted(ROOT.glob(pattern), key=lambda p: p.stat().st_mtime) if glob else [ROOT / pattern]
    if not matches or not matches[-1].is_file():
        raise FileNotFoundError(f"{pattern}: no backbone file; pretrain first (pipelines/pretrain.py)")
    return matches[-1]


def manifest_from_paths(config: GridConfig) -> dict[str, dict[str, Any]]:
    """Manifest of backbones given as paths (``backbones: {init: path or glob}``, newest match).

    An init ``random`` without a path is the first backbone's architecture, bands and statistics
    with freshly initialised weights (torch seed 0).
    """
    from rsmae.evaluation.data import backbone_meta
    from rsmae.evaluation.features import file_digest

    paths = {init: _newest(p) for init, p in config.backbones.items()}
    if "random" in config.inits and "random" not in paths:
        meta = backbone_meta(next(iter(paths.values())))
        meta.source = "random init (torch seed 0)"
        paths["random"] = save_random_backbone(meta, Path(config.backbones_dir) / "random.safetensors")
    return {init: {"path": str(p), "sha256": file_digest(p), "steps": None, "corpus": str(p.parent),
                   "images": None, "scenes": None} for init, p in paths.items()}


def add_external(config: GridConfig, manifest: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Convert the foreign weights named under ``external`` into backbone files; add them as inits.

    A converted file is reused while its record ``<kind>.json`` (the source file's SHA-256, the
    converter's settings and the rsmae version) matches; a changed source is converted again.
    """
    import rsmae
    from rsmae.evaluation.data import peek_size, task_bands
    from rsmae.evaluation.features import file_digest
    from rsmae.evaluation.interop import import_weights
    from rsmae.models.registry import weights_format

    data = config.data
    for kind, path in config.external.items():
        if not path:
            continue
        out = Path(config.backbones_dir) / "external" / f"{kind}.safetensors"
        settings = {"bands": list(task_bands(data["sensor"], data["layout"])), "sensor": data["sensor"],
                    "img_size": peek_size(data["train_root"])}
        key = {"source_sha256": file_digest(ROOT / path), "converter": kind, **settings,
               "rsmae": rsmae.__version__}
        if read_json(out.with_suffix(".json")) != key or not out.is_file():
            import_weights(ROOT / path, weights_format(kind).name, out, **settings)  # the one spelling
            atomic_write_json(out.with_suffix(".json"), key, indent=1)  # after the file: a kill reconverts
        manifest[kind] = {"path": str(out), "sha256": file_digest(out), "steps": None, "corpus": str(path),
                          "images": None, "scenes": None}
        if kind not in config.inits:
            config.inits.append(kind)
    return manifest


class MissingInitsError(RsmaeError, FileNotFoundError):
    """Inits of the grid without a backbone (``missing``) in ``backbones_dir``."""

    def __init__(self, missing: list[str], backbones_dir: str) -> None:
        super().__init__(f"no backbone for inits {missing} in {backbones_dir}/backbones.json; "
                         "run without --tables-only to build them")
        self.missing = missing


def grid_manifest(config: GridConfig, *, build: bool = True) -> dict[str, dict[str, Any]]:
    """The manifest of every init of the grid: given paths, or the built (``build``) or last built ones.

    Foreign weights under ``external`` are converted and added; a change-detection grid gets the
    from-scratch reference row ``fc_siam_diff``.

    Raises:
        MissingInitsError: an init of the grid has no backbone.
    """
    if config.backbones:
        manifest = manifest_from_paths(config)
    else:
        if build:
            build_backbones(config.backbones_dir, steps=config.pretrain_steps)
        manifest = load_manifest(config.backbones_dir)
    manifest = add_external(config, manifest)
    if config.is_change:  # the from-scratch reference row of change detection
        manifest["fc_siam_diff"] = {"path": None, "sha256": None, "model": "fc-siam-diff", "steps": 0,
                                    "corpus": "none (from scratch)", "images": 0, "scenes": 0}
    missing = sorted({c["init"] for c in plan_cells(config)} - set(manifest))
    if missing:
        raise MissingInitsError(missing, config.backbones_dir)
    return manifest


def summary_rows(manifest: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per init: counts, minutes, final losses, EuroSAT probe at the start and end, sha256."""
    rows = []
    for init, e in manifest.items():
        stages = e.get("stages", [])
        last = stages[-1] if stages else {}
        row = {"init": init, **{k: e[k] for k in ("steps", "corpus", "images", "scenes")},
               "minutes": round(sum(s["seconds"] for s in stages) / 60, 1) if stages else None,
               "final_loss": last.get("final_loss"), "final_recon_loss": last.get("final_recon_loss")}
        for when in ("start", "end"):
            probe = e.get(f"probe_{when}") or {}
            row.update({f"{k}_{when}": probe.get(f"probe/{k}_acc") for k in ("knn", "linear")})
        rows.append({**row, "sha256": e["sha256"]})
    return rows


def manifest_table(manifest: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`summary_rows`; a backbone given as a file is named by path and sha256.

    Counts this benchmark did not make (a file given in the config, converted foreign weights) are ``-``.
    """
    def num(value: float | None, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = ["| init | steps | corpus | images | scenes | minutes | final loss (recon) | kNN: step 0, end "
             "| linear: step 0, end |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary_rows(manifest):
        cells = [r["init"], count(r["steps"]), _corpus_cell(r, manifest[r["init"]]), count(r["images"]),
                 count(r["scenes"]), num(r["minutes"], ".1f"),
                 f"{num(r['final_loss'], '.4f')} ({num(r['final_recon_loss'], '.4f')})",
                 *(f"{num(r[k + '_start'])}, {num(r[k + '_end'])}" for k in ("knn", "linear"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _corpus_cell(row: dict[str, Any], entry: dict[str, Any]) -> str:
    """The corpus of a backbone pretrained here; else its file (path under the checkout, sha256 prefix).

    A file given in the config (:func:`manifest_from_paths`, its corpus its folder) is named alone; a
    converted one (:func:`add_external`) also names its source.
    """
    if row["steps"] is not None or not entry.get("path"):
        return str(row["corpus"])
    path = Path(entry["path"])
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    cell = f"file {shown} (sha256 {str(row['sha256'])[:12]})"
    return cell if row["corpus"] in (None, str(path.parent)) else f"{cell}, converted from {row['corpus']}"
