"""Progress bars that follow tqdm's own rules: off when output is not a terminal, off with
``TQDM_DISABLE`` set, off when a command is asked for none (``--no-progress``, ``-q``)."""

from __future__ import annotations

import os

#: Values of ``TQDM_DISABLE`` that leave bars on.
_OFF_VALUES = ("", "0", "false", "no")


def bar_disable(show: bool) -> bool | None:
    """The ``disable`` argument of a ``tqdm`` bar: True when ``show`` is false or ``TQDM_DISABLE`` is set,
    else None (tqdm then draws only on a terminal). tqdm reads ``TQDM_DISABLE`` only for bars that
    pass no ``disable`` at all, so an explicit value must account for it."""
    if not show or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _OFF_VALUES:
        return True
    return None
