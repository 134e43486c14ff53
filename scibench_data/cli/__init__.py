"""The ``scibench-data`` command line.

Commands are ``VERB DATASET`` (``convert cloudmask``, ``train stemdl``) or plain
commands (``verify``, ``benchmarks``). Each data set's module registers its own
subcommands; add a module to ``MODULES`` to add commands.

The data stack is imported inside the commands: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: Modules with a ``register(cli: Commands)`` function.
MODULES: tuple[str, ...] = (
    "scibench_data.cli.cloudmask",
    "scibench_data.cli.cloudmask_ds2",
    "scibench_data.cli.subset",
    "scibench_data.cli.storage",
    "scibench_data.cli.stemdl",
    "scibench_data.cli.uno",
    "scibench_data.cli.scoring",
    "scibench_data.cli.show",
)

VERB_HELP = {
    "generate": "write synthetic raw files in the data set's real on-disk format",
    "convert": "convert raw files into one Zarr store (resumable)",
    "train": "train the reference model on a catalog entry",
    "evaluate": "score a trained model on a catalog entry",
    "predict": "write a trained model's predictions of the test split in the benchmark's prediction format",
    "run": "the whole benchmark on the embedded default: generate, convert, open via the catalog, train, evaluate, "
           "predict",
    "show": "draw a sample (and a prediction) as a PNG picture",
    "append": "append new, late or reprocessed raw products to a complete store (resumable)",
    "scaffold": "create a store with a data set's full-scale shape as metadata, filling only some regions",
    "subset": "select scenes, times, channels and a window lazily; --dry-run says what would be read",
}


def add_global_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``-q`` and ``--debug``, accepted before the command and after it (``scibench-data -q run cloudmask``
    or ``scibench-data run cloudmask -q``)."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}  # a subcommand must not reset the top's value
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only", **default)
    p.add_argument("--debug", action="store_true", help="print the traceback of an error, and INFO logs", **default)


class _Subparsers:
    """An ``add_subparsers`` action whose every parser takes the global options."""

    def __init__(self, action: argparse._SubParsersAction) -> None:
        self._action = action

    def add_parser(self, *args, **kwargs) -> argparse.ArgumentParser:
        p = self._action.add_parser(*args, **kwargs)
        add_global_options(p)
        return p


class Commands:
    """Registry handed to each module's ``register``."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
        self._verbs: dict[str, _Subparsers] = {}

    def dataset(self, verb: str, dataset: str, func: Callable[[argparse.Namespace], int | None],
                help: str) -> argparse.ArgumentParser:
        """Add ``scibench-data VERB DATASET``."""
        if verb not in self._verbs:
            p = self._sub.add_parser(verb, help=VERB_HELP.get(verb, verb), description=VERB_HELP.get(verb))
            self._verbs[verb] = _Subparsers(p.add_subparsers(dest="dataset", required=True, metavar="DATASET"))
        p = self._verbs[verb].add_parser(dataset, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def command(self, name: str, func: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        """Add a plain ``scibench-data NAME``."""
        p = self._sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def group(self, name: str, help: str) -> _Subparsers:
        """Add ``scibench-data NAME SUBCOMMAND`` (e.g. ``submission validate``)."""
        p = self._sub.add_parser(name, help=help, description=help)
        return _Subparsers(p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scibench-data",
        description="Get, convert, subset, stream and score MLCommons Science benchmark data.",
    )
    from scibench_data import __version__

    parser.add_argument("--version", action="version", version=f"scibench-data {__version__}")
    add_global_options(parser, top=True)
    cli = Commands(parser)
    for name in MODULES:
        importlib.import_module(name).register(cli)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: printed as one line, exit code 2, no traceback.

    ``KeyError`` is an unknown name (a catalog entry, a data set); ``ValueError`` covers bad
    values and names that would leave the configured root (``PathEscapeError``)."""
    from scibench_data.formats import SourceFormatError
    from scibench_data.storage.store.lock import StoreLockedError
    from scibench_data.storage.store.records import StoreStateError
    from scibench_data.storage.store.regions import MisalignedRegionError

    return (SourceFormatError, StoreStateError, StoreLockedError, MisalignedRegionError, FileNotFoundError,
            FileExistsError, PermissionError, ValueError, KeyError)


def cluster_errors() -> tuple[type[BaseException], ...]:
    """A dask scheduler that does not answer, a cluster node that cannot run the job (preflight):
    one line naming the address, exit code 4, nothing written."""
    from scibench_data.cluster import PreflightError
    from scibench_data.parallel import SchedulerUnreachableError

    return (SchedulerUnreachableError, PreflightError)


def storage_errors() -> tuple[type[BaseException], ...]:
    """Errors of the storage service (unreachable, reset) after every retry: one line, exit code 3."""
    from scibench_data.storage.store.retries import RemoteReadError

    errors: tuple[type[BaseException], ...] = (RemoteReadError, ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import BotoCoreError

        errors += (BotoCoreError,)
    except ImportError:  # S3 support not installed
        pass
    return errors


def message(err: BaseException) -> str:
    """An error's message (a KeyError's without the quotes ``str`` adds)."""
    return str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)


def configure(args: argparse.Namespace) -> None:
    """Apply ``-q`` (progress bars off through tqdm's own ``TQDM_DISABLE``; warnings only) and
    ``--debug`` (INFO logs of our modules on stderr)."""
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
        if hasattr(args, "progress"):
            args.progress = False
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    level = logging.INFO if args.debug else logging.ERROR if args.quiet else logging.WARNING
    for name in ("scibench_data", "loaders", "reference_models"):
        logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args)
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        if args.debug:
            traceback.print_exc()
        print(f"scibench-data: error: {message(err)}", file=sys.stderr)
        return 2
    except cluster_errors() as err:  # before storage errors: an unreachable scheduler is no storage fault
        if args.debug:
            traceback.print_exc()
        print(f"scibench-data: dask cluster: {message(err)}", file=sys.stderr)
        return 4
    except storage_errors() as err:
        if args.debug:
            traceback.print_exc()
        print(f"scibench-data: storage error ({type(err).__name__}): {message(err)}; rerun the same "
              "command once the storage is reachable (finished work is kept)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("scibench-data: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
