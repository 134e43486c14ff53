"""Preloaded in the DataLoader workers' forkserver: import the parent's main script there, once.

A worker started by ``spawn`` or ``forkserver`` first re-imports the main script (as
``__mp_main__``) and everything it imports: about a second for a training script that imports
xarray and dask, paid by every worker of every epoch. CPython's own ``"__main__"`` preload
should do it once in the server, but the server never receives the script's path (in 3.11 it
asks ``spawn.get_preparation_data`` for a ``main_path`` key that function does not produce;
CPython gh-126631 / gh-137996, fixed in later releases).
:func:`loaders.workers.forkserver_context` puts the path (or the module name, for ``python -m``)
in the environment the server starts with; this module imports it there as ``spawn`` would,
so every worker forked from the server finds its ``__main__`` already in place and skips the
re-import. If the import fails here (for example a script that parses ``sys.argv`` outside
its ``if __name__ == "__main__"`` block: the server's ``sys.argv`` is not the script's), nothing
is done: workers then import the script themselves and report any error as usual.
"""

from __future__ import annotations

import os
from multiprocessing import process, spawn
from typing import Any

from loaders.workers import MAIN_NAME, MAIN_PATH


def _import_main() -> None:
    path, name = os.environ.get(MAIN_PATH), os.environ.get(MAIN_NAME)
    if not (path or name):
        return
    current: Any = process.current_process()
    private: Any = spawn  # CPython's own (undocumented) helpers, as spawn.prepare uses them
    current._inheriting = True  # as spawn.prepare does: no nested process start
    try:
        if name:
            private._fixup_main_from_name(name)
        elif path:
            spawn.import_main_path(path)
    except BaseException:  # noqa: BLE001 - the workers will import it again and say what fails
        return
    finally:
        del current._inheriting


_import_main()
