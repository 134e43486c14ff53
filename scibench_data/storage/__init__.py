"""Zarr stores: :mod:`.store` (one store: where it is, how its bytes are written, locked, named and
checked) and :mod:`.distribution` (moving whole stores between places: publish, pull, a local S3
server). ``distribution`` imports ``store``, never the reverse."""
