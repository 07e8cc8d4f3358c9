"""What every ``rsmae`` command shares: help with defaults, ``-v``, quiet logs and one error exit.

A command parses its options, then runs its body through :func:`run`: an expected failure (an
:class:`~rsmae.errors.RsmaeError`, an ``OSError`` such as a full disk, a worker process that died, a
``ValueError``) ends as one ``error: <message>`` line on stderr and exit code 2, Ctrl+C as
``error: interrupted`` and exit code 130; ``-v`` adds the traceback. Logging is configured here and
only for the length of a command: rsmae's own records at the command's level, third-party INFO
records (Dask's scheduler and workers, Lightning's accelerator lines and tips) only with ``-v``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from rsmae.errors import RsmaeError

__all__ = ["ERRORS", "EXIT_ERROR", "EXIT_INTERRUPTED", "QUIET_WARNINGS", "HelpFormatter", "cli_logging",
           "dask_target", "describe", "make_parser", "run"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
ERRORS: tuple[type[BaseException], ...] = (RsmaeError, OSError, BrokenProcessPool, ValueError,
                                           pickle.UnpicklingError)
# Loggers that set their own level (and, if the root logger has no handler yet, their own handler) on
# import: held at WARNING for the length of a command unless --verbose.
THIRD_PARTY = ("distributed", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
               "lightning_fabric")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Lightning's warnings that rsmae causes on purpose and a user cannot act on (shown with -v)
QUIET_WARNINGS = (
    "You have overridden `on_after_batch_transfer`",  # PretrainTask augments on the device there
    "Precision .* is not supported by the model summary",
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen blocks of lastK protocols
    r"Port \d+ is already in use",  # a local Dask cluster's HTTP server moves to a free port by itself
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (examples keep their lines); each option's default after its help.

    An unset default (``None``, or ``False`` of a flag) is left out: the help says what happens then.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: ``doc`` (the module docstring) as its description, and ``-v/--verbose``.

    Args:
        doc: Description and examples, shown as written.
        prog: Program name in the usage line (``rsmae tile``; default: the script's name).
    """
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show tracebacks and third-party INFO logs (Dask, Lightning)")
    return p


def dask_target(value: str) -> str | bool:
    """A ``--dask`` value: ``local`` (a Dask LocalCluster, ``True``) or a scheduler address.

    Raises:
        argparse.ArgumentTypeError: neither (e.g. an input path taken as the address).
    """
    if value == "local":
        return True
    if ":" not in value:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither 'local' nor a scheduler address such as tcp://HOST:8786")
    return value


def describe(err: BaseException) -> str:
    """The one-line message of an expected failure."""
    if isinstance(err, BrokenProcessPool):
        return (f"a worker process died ({err}); run again, with fewer --workers if memory ran out "
                "(-v shows the traceback)")
    if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) refused a file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return (f"a checkpoint holds objects that are not weights, and rsmae loads weights only "
                f"({first}); use a checkpoint that rsmae or Lightning wrote")
    if isinstance(err, OSError) and not isinstance(err, RsmaeError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err) or type(err).__name__


def _own_or_warning(record: logging.LogRecord) -> bool:
    """Quiet mode: rsmae's records (their logger's level decides) and every warning or error."""
    return record.levelno >= logging.WARNING or record.name == "rsmae" or record.name.startswith("rsmae.")


@contextmanager
def cli_logging(verbose: bool = False, level: int = logging.WARNING) -> Iterator[None]:
    """Log to stderr for the length of a command, then leave logging as it was.

    Like ``logging.basicConfig``, a handler is added only when the root logger has none: a host
    that configured logging (an application calling ``main``, pytest) keeps its own handlers.

    Args:
        verbose: Third-party INFO records too, and rsmae's INFO records.
        level: Level of rsmae's own records (``logging.INFO`` for commands that report progress so).
    """
    root, own = logging.getLogger(), logging.getLogger("rsmae")
    saved = {name: logging.getLogger(name).level for name in ("", "rsmae", *THIRD_PARTY)}
    handler = None
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not verbose:  # third parties imported later reset their own level: filtered here
            handler.addFilter(_own_or_warning)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
        root.addHandler(handler)
    own.setLevel(min(level, logging.INFO) if verbose else level)
    if not verbose:
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


def _fail(message: str, verbose: bool, code: int) -> int:
    """Print the active exception's traceback (verbose) and ``error: message``; return ``code``."""
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def run(body: Callable[[], int], *, verbose: bool, level: int = logging.WARNING,
        errors: tuple[type[BaseException], ...] = ERRORS,
        quiet_warnings: tuple[str, ...] = QUIET_WARNINGS) -> int:
    """Run a command's body with its logging; turn expected failures into an exit code.

    Args:
        body: The command after parsing; returns its exit code.
        verbose: ``-v``: tracebacks, third-party INFO logs and every warning.
        level: Level of rsmae's own log records.
        errors: Exceptions that end as ``error: <message>`` and exit code 2.
        quiet_warnings: Regular expressions of warning messages a user cannot act on, hidden unless
            verbose (deprecation warnings of the libraries are always hidden then).

    Returns:
        The body's exit code, 2 on an expected failure, 130 on Ctrl+C.
    """
    with cli_logging(verbose, level), warnings.catch_warnings():
        if not verbose:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            for message in quiet_warnings:
                warnings.filterwarnings("ignore", message=message)
        try:
            return body()
        except KeyboardInterrupt:
            return _fail("interrupted", verbose, EXIT_INTERRUPTED)
        except errors as err:
            return _fail(describe(err), verbose, EXIT_ERROR)
