"""scibench-data: MLCommons Science benchmarks as chunked Zarr behind one intake catalog."""

from __future__ import annotations

import warnings
from importlib.resources import files

__version__ = "0.1.0"

# Our stores keep their bookkeeping (plan, per-record markers, lock) under
# ``_scibench/``, which zarr rightly does not know, and use consolidated
# metadata on purpose (one read to open a store). Neither needs a warning.
warnings.filterwarnings("ignore", message="Object at _scibench is not recognized", module="zarr")
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", module="zarr")
# intake warns on every entry that it did not run shell() templates; we use none.
warnings.filterwarnings("ignore", message="Shell command not executed", category=UserWarning)


def catalog_path() -> str:
    """Path of the intake catalog shipped with the package (``catalog/scibench.yaml``)."""
    return str(files("scibench_data") / "data" / "scibench.yaml")


def open_catalog(root: str | None = None, **kwargs):
    """Open our catalog; ``root`` (else ``$SCIBENCH_DATA_ROOT``, else ``~/scibench-data``) is where stores live."""
    # import cycle (catalog imports catalog_path from here); intake costs seconds to import
    from scibench_data.catalog import open_catalog as _open

    return _open(root=root, **kwargs)
