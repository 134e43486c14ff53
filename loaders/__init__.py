"""Thin framework loaders over scibench-data stores."""

from loaders import workers as _workers  # noqa: F401 - registers the after-fork reset of dask
