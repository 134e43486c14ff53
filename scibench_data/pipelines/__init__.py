"""Benchmark pipelines: train, evaluate and run end to end, per data set."""
