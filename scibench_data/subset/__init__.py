"""Subsets of a store (one module per data set): :mod:`.cloudmask`."""
