"""Moving whole stores between places: publish versions, pull them, a local S3 server for tests
and demos. Built on :mod:`scibench_data.storage.store`."""
