"""Thin framework loaders over scibench-data stores."""

from loaders import workers as _workers  # noqa: E402,F401 - registers the after-fork reset of dask
