"""Thin framework loaders over scibench-data stores."""
