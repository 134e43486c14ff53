"""The one way we write a local file we may be interrupted writing: whole or not at all.

:func:`write_bytes` writes a temporary ``NAME.<uuid>.tmp`` beside the target (the name the store's
cleanup and manifest know as temporary), syncs it (unless told not to) and renames it over the target; a failure leaves
the previous file and no temporary. :func:`write_json` is every JSON file of ours (reports, scores,
run summaries, markers) on top of it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` in one step (parent folders are created); returns the path.
    The rename alone makes the write atomic for readers and against a killed process; ``fsync``
    also makes it durable across a power loss (off for the many small objects of a conversion or a pull)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def json_text(obj: Any, *, sort_keys: bool = True) -> str:
    """``obj`` as our JSON files hold it: indented by 2, one trailing newline, other types as ``str``."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as JSON (:func:`json_text`) to ``path`` atomically (:func:`write_bytes`)."""
    return write_bytes(path, json_text(obj, sort_keys=sort_keys).encode())
