"""One module per data set declaring its split rule, its ground truth and its benchmarks (metrics,
target, reference, prediction format): :mod:`.cloudmask`, :mod:`.stemdl`, :mod:`.uno`. The registry
(:mod:`scibench_data.registry`) collects their ``BENCHMARKS``; nothing else branches on a data set's
name. This package sits below every other layer: it imports NumPy (and Dask lazily), nothing of ours
above it."""
