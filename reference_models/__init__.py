"""Reference models of the benchmarks (PyTorch)."""
