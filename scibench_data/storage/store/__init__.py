"""One store: its location and how its bytes are reached (location, retries, cache), written
(encoding, regions, records), locked (lock), named (confine, hashing) and checked (manifest,
integrity, checked). Imports nothing from :mod:`scibench_data.storage.distribution` or the catalog."""
