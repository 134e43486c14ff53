"""The file our synthetic generators leave beside what they write, so that a conversion of it
(``scibench-data generate`` then ``convert``, not only ``run``) records the store as synthetic.

The products themselves stay in the exact real format; the marker is a separate small JSON file
(``SCIBENCH_SYNTHETIC.json``: the generator's module name) in the folder the generator wrote. A
converter looks for it in its source folder and in the folders holding its products. Real
archives have none. A marker in a hostile archive can only label its data synthetic (kept out of
leaderboard rankings), never change what is read.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from pathlib import Path

import fsspec

from scibench_data.atomic import write_json

MARKER_NAME = "SCIBENCH_SYNTHETIC.json"
#: A marker is a few bytes; a larger file is not one of ours.
_MAX_BYTES = 4096
_UNKNOWN = "unknown synthetic generator"


def write_marker(folder: str | Path, generator: str) -> Path:
    """Say in ``folder`` that ``generator`` wrote the files in it."""
    return write_json(Path(folder) / MARKER_NAME, {"generator": generator,
                                                   "note": "synthetic data written by scibench-data, not a real archive"})


def find_marker(fs: fsspec.AbstractFileSystem, folders: Iterable[str]) -> str | None:
    """The generator named by the first marker in ``folders`` (``None`` when there is none)."""
    for folder in dict.fromkeys(f.rstrip("/") for f in folders):
        path = posixpath.join(folder, MARKER_NAME)
        try:
            with fs.open(path, "rb") as f:
                data = f.read(_MAX_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        try:
            generator = json.loads(data.decode()).get("generator") if len(data) <= _MAX_BYTES else None
        except (UnicodeDecodeError, ValueError, AttributeError):
            generator = None
        ok = isinstance(generator, str) and 0 < len(generator) <= 200 and generator.isprintable()
        return generator if ok else _UNKNOWN
    return None
