"""Tables and plot of the k-fold fine-tuning benchmark (``transfer_kfold.py``): accuracy with 95 % intervals.

Rows are per-image predictions of one init (``{"protocol", "fold", "image", "correct", "lr", ...}``);
every comparison is paired on the images both inits predicted: paired-bootstrap 95 % interval of the
difference and McNemar's exact p, and a verdict that calls a difference only when the interval
excludes 0 (:func:`rsmae.stats.verdict`). Besides random init and the spectral floor, every pair of
the other inits is compared, so the table can rank them or say that it cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsmae.stats import bootstrap_interval, mcnemar_exact, paired_bootstrap, pairwise_verdicts, verdict

RANDOM, SPECTRAL, RCF = "random init", "spectral floor", "RCF floor"
FLOORS = {SPECTRAL: "spectral", RCF: "rcf"}  # table name -> rsmae.evaluation.floors method
Rows = list[dict[str, Any]]


def correct_vector(rows: Rows, n: int) -> np.ndarray:
    """0/1 correctness of the images ``rows`` test (of ``n``) in image order: aligned across inits."""
    out = np.full(n, np.nan)
    for r in rows:
        out[r["image"]] = r["correct"]
    return out[~np.isnan(out)]


def _acc(c: np.ndarray) -> str:
    lo, hi = bootstrap_interval(c)
    return f"{100 * c.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    d, m = paired_bootstrap(a, b), mcnemar_exact(a, b)
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] (p = {m.p_value:.2g})"


def _said(a: str, b: str, ca: np.ndarray, cb: np.ndarray) -> str:
    return verdict(a, b, paired_bootstrap(ca, cb), p_value=mcnemar_exact(ca, cb).p_value)


def lr_choices(rows: Rows, protocol: str) -> str:
    """The LR each fold chose, e.g. ``"0.001 0.0003 ..."`` in fold order."""
    chosen = {r["fold"]: r["lr"] for r in rows if r["protocol"] == protocol}
    return " ".join(f"{chosen[f]:g}" for f in sorted(chosen, key=lambda f: (len(f), f)))


def covered(results: dict[str, Rows], protocol: str, folds: list[str]) -> list[str]:
    """The folds (of ``folds``, in order) that every init has for ``protocol`` (a timed run may lack some)."""
    have = [{r["fold"] for r in rows if r["protocol"] == protocol} for rows in results.values()]
    return [f for f in folds if all(f in h for h in have)]


def _on(rows: Rows, folds: list[str], protocol: str | None = None) -> Rows:
    return [r for r in rows if r["fold"] in folds and protocol in (None, r["protocol"])]


def edge_note(results: dict[str, Rows], protocol: str, folds: list[str], grid: tuple[float, ...]) -> str:
    """A warning when cells chose the grid's largest or smallest LR (the grid may not hold the best one)."""
    if len(grid) < 2:
        return ""
    chosen = list({(init, r["fold"]): r["lr"] for init, rows in results.items()
                   for r in _on(rows, folds, protocol)}.values())
    top, low = sum(lr == max(grid) for lr in chosen), sum(lr == min(grid) for lr in chosen)
    if not top + low:
        return ""
    return (f"Chosen LR at the grid's edge in {top + low} of {len(chosen)} cells ({top} at its largest, "
            f"{max(grid):g}; {low} at its smallest, {min(grid):g}): the grid may not hold the best LR "
            "for this budget.")


def pair_sentences(results: dict[str, Rows], protocol: str, done: list[str], n: int) -> list[str]:
    """Every pair of inits other than random init, paired on the images of ``done``, under one heading.

    The intervals are Bonferroni-widened (:func:`rsmae.stats.pairwise_verdicts`), so that all of them
    hold together with 95 %.
    """
    vec = {init: correct_vector(_on(rows, done, protocol), n)
           for init, rows in results.items() if init != RANDOM}
    level, said = pairwise_verdicts(vec)
    if not said:
        return []
    return [f"### {protocol}: between the inits ({len(said)} pairs, each paired on the same "
            f"{next(iter(vec.values())).size} images; Bonferroni: each interval at {100 * level:.3g} % so "
            "that all hold together with 95 %; McNemar p unadjusted)", "",
            *(f"- {protocol}: {t}" for t in said), ""]


def tables(results: dict[str, Rows], floors: dict[str, Rows], protocols: list[str], n: int,
           folds: list[str], grid: tuple[float, ...] = ()) -> list[str]:
    """Markdown tables (one per protocol) with their verdict sentences; ``results`` holds RANDOM.

    A protocol is scored on the folds every init has (all of ``folds`` once every cell is computed),
    each floor (``name -> rows``, e.g. SPECTRAL and RCF) on the same images; ``grid`` (the LR
    candidates) flags choices at its edges.
    """
    out = ["| floor | accuracy % [95 % CI] |", "|---|---|",
           *(f"| {name} (every protocol's floor, all folds) | {_acc(correct_vector(rows, n))} |"
             for name, rows in floors.items()), ""]
    for protocol in protocols:
        done = covered(results, protocol, folds)
        out += [f"## {protocol}", ""]
        if not done:
            out += ["No fold is done for every init yet: rerun without `--time-limit`.", ""]
            continue
        low = {name: correct_vector(_on(rows, done), n) for name, rows in floors.items()}
        tested = len(_on(next(iter(floors.values())), done))
        if len(done) < len(folds):
            out += [f"**Partial: scored on {', '.join(done)} only ({tested} of {n} images); folds "
                    f"{', '.join(f for f in folds if f not in done)} not computed yet for every init.**", ""]
        base = correct_vector(_on(results[RANDOM], done, protocol), n)
        out += ["| init | accuracy % [95 % CI] | − random init [95 % CI] (McNemar p) | "
                + "".join(f"− {name} [95 % CI] (McNemar p) | " for name in floors) + "LR chosen per fold |",
                "|---|---|---|" + "---|" * len(floors) + "---|"]
        out += [f"| {name} (same images) | {_acc(c)} | {_diff(c, base)} | "
                + "".join("| " if other == name else f"{_diff(c, low[other])} | " for other in floors) + " |"
                for name, c in low.items()]
        sentences = []
        for init, rows in results.items():
            c = correct_vector(_on(rows, done, protocol), n)
            vs_random, lrs = "" if init == RANDOM else _diff(c, base), lr_choices(_on(rows, done), protocol)
            out.append(f"| {init} | {_acc(c)} | {vs_random} | "
                       + "".join(f"{_diff(c, f)} | " for f in low.values()) + f"{lrs} |")
            if init != RANDOM:
                sentences.append(f"- {protocol}: " + _said(init, RANDOM, c, base))
            sentences += [f"- {protocol}: " + _said(init, name, c, f) for name, f in low.items()]
        edge = edge_note(results, protocol, done, grid)
        out += ["", *([edge, ""] if edge else []), *sentences, ""]
        out += pair_sentences(results, protocol, done, n)
    for other in protocols[1:]:
        first = protocols[0]
        done = [f for f in covered(results, other, folds) if f in covered(results, first, folds)]
        if done:
            same = len(_on(next(iter(floors.values())), done))
            out += [f"## {other} against {first}, per init (same {same} images)", "",
                    *(f"- {init}: " + _said(other, first, correct_vector(_on(rows, done, other), n),
                                            correct_vector(_on(rows, done, first), n))
                      for init, rows in results.items()), ""]
    return out


def plot(results: dict[str, Rows], floors: dict[str, Rows], protocols: list[str], n: int, folds: list[str],
         path: Path) -> None:
    """Accuracy with its 95 % interval per init, one panel per protocol, each floor as a band.

    Each panel shows the folds every init has for its protocol (:func:`covered`), the floor on them.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(protocols), figsize=(4.8 * len(protocols), 0.5 * len(results) + 2.2),
                             sharey=True, squeeze=False)
    names = list(results)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        done = covered(results, protocol, folds)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first init on top
        if not done:
            ax.text(0.5, 0.5, f"{protocol}: no fold done for every init", ha="center", transform=ax.transAxes)
            continue
        for (name, rows), colour in zip(floors.items(), ("tab:red", "tab:green", "tab:purple"), strict=False):
            spec = correct_vector(_on(rows, done), n)
            slo, shi = bootstrap_interval(spec)
            ax.axvspan(100 * slo, 100 * shi, color=colour, alpha=0.12)
            ax.axvline(100 * spec.mean(), color=colour, ls="--", lw=1, label=f"{name} (95 % CI band)")
        for y, init in enumerate(names):
            c = correct_vector(_on(results[init], done, protocol), n)
            lo, hi = bootstrap_interval(c)
            ax.errorbar(100 * c.mean(), y, xerr=[[100 * (c.mean() - lo)], [100 * (hi - c.mean())]],
                        fmt="o", capsize=3, color="0.4" if init == RANDOM else "tab:blue")
        ax.set_title(f"{protocol}: EuroSAT, {len(folds)}-fold CV, {spec.size} test images"
                     + ("" if len(done) == len(folds) else f" ({len(done)} fold(s) done)"), fontsize=9)
        ax.set_xlabel("accuracy (%), 95 % CI over the images")
        ax.grid(alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].set_ylabel("init")
    handles, labels = next((h for h in (ax.get_legend_handles_labels() for ax in axes[0]) if h[0]), ([], []))
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    if handles:  # below the panels, off the data
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


