"""One clear error when a catalog entry's store does not exist yet, naming the entry and the
command that creates it.

Our catalog driver (:class:`scibench_data.intake_source.ScibenchZarrSource`) raises it, so
``cat.ENTRY.to_dask()`` (through :func:`scibench_data.open_catalog` or plain intake) and the CLI
say the same thing.
"""

from __future__ import annotations

from fsspec.core import url_to_fs

#: The command that creates each entry's store on the embedded default (``{store}``: its URL).
CREATED_BY = {
    "cloudmask_ds1": "scibench-data run cloudmask",
    "cloudmask_ds2": "scibench-data convert cloudmask --layout sen3 PRODUCTS/ {store}",
    "stemdl": "scibench-data run stemdl",
    "stemdl_reconstruction": "scibench-data run stemdl",
    "candle_uno": "scibench-data run uno",
}


class MissingStoreError(FileNotFoundError):
    """A catalog entry whose store does not exist (or never finished): one line, with the fix."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def creating_command(entry: str, store: str) -> str:
    """The command that creates ``entry``'s store (or a published one to pull)."""
    made = CREATED_BY.get(entry, f"scibench-data convert ... {store}").format(store=store)
    return f"{made} (or pull a published copy: scibench-data pull {entry} --catalog URL --to ROOT)"


def missing_store(entry: str, store: str, exists: bool = False) -> MissingStoreError:
    """The error for an entry whose store at ``store`` is missing, or present but not complete."""
    if exists:
        return MissingStoreError(f"catalog entry {entry}: the store {store} is not complete (an interrupted "
                                 f"conversion?); rerun the command that creates it to finish it: "
                                 f"{creating_command(entry, store)}")
    return MissingStoreError(f"catalog entry {entry} has no store yet ({store} does not exist); create it "
                             f"with: {creating_command(entry, store)}")


def store_exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether anything exists at ``url`` (a local folder or an object-store prefix)."""
    try:
        fs, path = url_to_fs(url, **(storage_options or {}))
        return bool(fs.exists(path))
    except (OSError, ValueError):
        return False
