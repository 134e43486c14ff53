"""Metrics (pure functions, NumPy and Dask), score reports and MLPerf logs."""
