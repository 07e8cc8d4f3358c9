"""Loss landscapes and flatness of MAE, RC-MAE, probed and supervised ViTs: surfaces, Hessian, noise, table.

Examples:
    rsmae landscape --config cpu-small    # a shipped config (configs/landscape/cpu-small.yaml), or a path
    rsmae landscape --config cpu-small --out runs/landscape/try --grid.size 5
    rsmae landscape --config cpu-small --dask tcp://scheduler:8786    # or --dask local
    rsmae landscape --config cpu-small --noise.enabled false --print_config    # the config, resolved

Every key of the config (a LandscapeConfig) is an option, dotted for its sections (--grid.size,
--hessian.iters); later options override earlier ones and the config. -v/--verbose shows tracebacks
and third-party INFO logs (Dask). The old flags --grid N and a bare --dask still work, with a warning.

Run again after an interruption: finished surface rows, eigenvalues, traces and noise draws are
read from OUT/cache.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from rsmae.cli.common import EXIT_ERROR, dask_target, run
from rsmae.cli.configs import resolve_config
from rsmae.errors import LandscapeError, RsmaeError
from rsmae.landscape.config import LandscapeConfig
from rsmae.landscape.study import run_study

__all__ = ["build_parser", "main", "upgrade_argv"]

VERBOSE = ("-v", "--verbose")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help with defaults, the description as written (the examples keep their lines)."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def upgrade_argv(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` name resolved to its file and the deprecated flags rewritten.

    ``--grid N`` becomes ``--grid.size N`` and a bare ``--dask`` ``--dask local``, each with one
    warning line on stderr.

    Raises:
        InputNotFoundError: a ``--config`` value is neither a file nor a shipped config.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        step = 1 if eq else 2
        if name == "--config" and value is not None:
            out += ["--config", str(resolve_config(value, "landscape"))]
        elif name == "--grid" and value is not None and value.lstrip("-").isdigit():
            _warn(f"--grid {value} is deprecated; use --grid.size {value}")
            out += ["--grid.size", value]
        elif arg == "--dask" and (value is None or value.startswith("-")):
            _warn("a bare --dask is deprecated; use --dask local")
            out += ["--dask", "local"]
            step = 1
        else:
            out.append(arg)
            step = 1
        i += step
    return out


def build_parser(prog: str | None = None) -> ArgumentParser:
    """Command-line options: ``--config`` and every key of :class:`LandscapeConfig`."""
    p = ArgumentParser(prog=prog, description=__doc__, formatter_class=_HelpFormatter, exit_on_error=False,
                       default_meta=False)
    p.add_argument("--config", action=ActionConfigFile,
                   help="YAML study: a path or a shipped name (cpu-small); repeated: later ones override")
    p.add_class_arguments(LandscapeConfig, None, fail_untyped=True, sub_configs=True)
    return p


def to_config(values: dict[str, Any]) -> LandscapeConfig:
    """The study of parsed options (``--dask local`` is a local cluster).

    Raises:
        LandscapeError: an invalid value (unknown objective, a ``dask`` that is no address...).
    """
    values = {k: v for k, v in values.items() if k != "config"}
    if isinstance(values.get("dask"), str):
        try:
            values["dask"] = dask_target(values["dask"])
        except argparse.ArgumentTypeError as err:
            raise LandscapeError(f"dask: {err}") from err
    return LandscapeConfig.from_dict(values, "options")


def _study(values: dict[str, Any]) -> int:
    result = run_study(to_config(values))
    print(result.table.read_text())
    comparisons = [f for f in result.figures if f.name.startswith("comparison_")]
    print("comparison figures:", *(str(f) for f in comparisons), sep="\n  ")
    print(f"table: {result.table} and {result.csv}; every number: {result.out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the study of a config; return the exit code (2 on an rsmae error or a bad option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE for a in argv)
    argv = [a for a in argv if a not in VERBOSE]
    try:
        parsed = build_parser(prog).parse_args(upgrade_argv(argv))
    except (argparse.ArgumentError, RsmaeError) as err:
        hint = "; give --config cpu-small or a YAML path" if "required: out" in str(err) else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as done:  # --help, --print_config
        return done.code if isinstance(done.code, int) else 0
    return run(lambda: _study(parsed.as_dict()), verbose=verbose, level=logging.INFO)
