"""Our intake catalog: where it is, where its stores live, and what each entry holds.

The catalog shipped in the package is ours: intake renders it as written (its ``root``
parameter, ``$SCIBENCH_DATA_ROOT``, ``$HOME``). Any other catalog (a published one read from
S3, a file someone sent) is data, not a program: :func:`load_checked` reads its YAML without
intake, refuses every template except ``{{ CATALOG_DIR }}`` (intake renders templates with an
unsandboxed jinja2, whose ``env()`` reads the reader's secrets and whose globals reach ``os``),
refuses parameters, plugins and drivers other than ``zarr`` and ours, keeps only the storage options in
:data:`CATALOG_STORAGE_OPTIONS` (never an endpoint, credentials or a profile: those come from
the reader) and confines every store URL (``::`` chains included) to the catalog's folder.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import intake
import yaml
from intake.catalog.local import YAMLFileCatalog
from intake.utils import yaml_load

from scibench_data import catalog_path
from scibench_data.storage.store.anonymous import ANON_ENV, ANON_TEMPLATE, is_truthy
from scibench_data.storage.store.confine import (
    PathEscapeError,
    check_chain,
    check_within,
    confine,
    relative_part,
)
from scibench_data.storage.store.location import StoreLocation

ROOT_ENV = "SCIBENCH_DATA_ROOT"
#: Storage options a catalog we did not ship may set; all else comes from the reader.
CATALOG_STORAGE_OPTIONS = frozenset({"anon"})
#: Our intake driver (intake-xarray's zarr source with metadata, decoded text and the integrity rules).
OUR_DRIVER = "scibench_data.intake_source.ScibenchZarrSource"
#: Drivers a catalog we did not ship may name (any other dotted name would import a module).
#: Both open through :data:`OUR_DRIVER`, so a published store is read with our integrity checks.
CATALOG_DRIVERS = frozenset({"zarr", OUR_DRIVER})
_TOP_KEYS = frozenset({"metadata", "sources", "name", "description"})
_ENTRY_KEYS = frozenset({"description", "driver", "args", "metadata"})
_ARG_KEYS = frozenset({"urlpath", "consolidated", "storage_options"})
_CATALOG_DIR = re.compile(r"\{\{\s*CATALOG_DIR\s*\}\}")
_TEMPLATE = re.compile(r"\{\{|\{%|\{#")
#: A catalog is a few KB; reading stops here.
MAX_CATALOG_BYTES = 8 * 1024 * 1024


class CatalogError(ValueError):
    """A catalog we did not ship asks for something a catalog may not do. One line."""


def default_root() -> str:
    """Where stores live: ``$SCIBENCH_DATA_ROOT``, else ``~/scibench-data`` (the embedded default)."""
    return os.environ.get(ROOT_ENV) or str(Path.home() / "scibench-data")


def store_url(entry: str, root: str | None = None, allow_escape: bool = False) -> str:
    """The URL of an entry's store under ``root`` (same rule as the catalog).

    An entry name that would leave ``root`` (``..``, an absolute path, a URL) is refused
    with :class:`~scibench_data.storage.store.confine.PathEscapeError` unless ``allow_escape``.
    """
    root = root or default_root()
    if not allow_escape:
        relative_part(entry, "catalog entry name", root)
    return confine(root, f"{entry}.zarr", allow_escape=allow_escape, what="catalog entry name")


def is_shipped(path: str | None) -> bool:
    """Whether ``path`` is the catalog shipped in the package (None means it)."""
    if path is None:
        return True
    return "://" not in str(path) and os.path.realpath(str(path)) == os.path.realpath(catalog_path())


def open_catalog(path: str | None = None, root: str | None = None, *,
                 storage_options: Mapping[str, Any] | None = None, trusted: bool = False,
                 allow_outside: bool = False, **kwargs) -> intake.catalog.Catalog:
    """Open a catalog: ours by default (with the catalog-level ``root`` set when given).

    Any other catalog is opened as data (:func:`load_checked`) unless ``trusted`` (a catalog
    you wrote yourself): the reader's ``storage_options`` (endpoint, credentials) open it and
    every entry's store; the catalog may only add :data:`CATALOG_STORAGE_OPTIONS`.
    """
    if is_shipped(path) or trusted:
        so = {"storage_options": dict(storage_options)} if storage_options else {}
        cat = intake.open_catalog(path or catalog_path(), **so, **kwargs)
        return cat(root=root) if root else cat
    if root or kwargs:
        raise CatalogError(f"{path}: a catalog we did not ship takes no parameters "
                           f"(got {sorted(kwargs) + (['root'] if root else [])})")
    if path is None:  # unreachable: None is the shipped catalog (is_shipped); narrows the type
        raise CatalogError("no catalog path")
    text = read_catalog_text(path, storage_options or {})
    return CheckedCatalog(load_checked(text, path, storage_options or {}, allow_outside=allow_outside),
                          catalog_dir(path))


def catalog_dir(url: str) -> str:
    """The folder of a catalog (what ``{{ CATALOG_DIR }}`` means): an S3 prefix or a local folder."""
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        return url.rsplit("/", 1)[0]
    local = url.removeprefix("file://")
    return posixpath.dirname(os.path.abspath(local))


def read_catalog_text(url: str, storage_options: Mapping[str, Any]) -> str:
    """The catalog's YAML text, read with the reader's options (at most :data:`MAX_CATALOG_BYTES`)."""
    check_chain(str(url), what="catalog URL")
    with fsspec.open(str(url), "rb", **dict(storage_options)) as f:
        data = f.read(MAX_CATALOG_BYTES + 1)
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(f"{url}: larger than {MAX_CATALOG_BYTES} bytes; not a catalog")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CatalogError(f"{url}: not UTF-8 text; not a catalog") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_templates(value: Any, url: str, where: str) -> None:
    """Any jinja2 syntax left in a string (after ``{{ CATALOG_DIR }}`` was replaced) is refused."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_templates(k, url, where)
            _refuse_templates(v, url, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_templates(v, url, f"{where}[{i}]")
    elif isinstance(value, str) and _TEMPLATE.search(value):
        raise CatalogError(f"{url}: {where} uses a template ({_short(value)}); a catalog we did not ship may "
                           "use no template but {{ CATALOG_DIR }} (no env(), shell() or other jinja)")


def _catalog_options(entry: str, options: Any, url: str) -> dict[str, Any]:
    """The entry's own storage options, allow-listed; ``anon`` becomes a bool."""

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise CatalogError(f"{url}: entry {entry!r} storage_options is not a mapping")
    refused = sorted(str(k) for k in options if k not in CATALOG_STORAGE_OPTIONS)
    if refused:
        raise CatalogError(f"{url}: entry {entry!r} sets storage option(s) {', '.join(refused)}; a catalog may "
                           f"set only {', '.join(sorted(CATALOG_STORAGE_OPTIONS))} (endpoint, credentials and "
                           "profile come from the reader: flags, environment, profile)")
    out: dict[str, Any] = {}
    if "anon" in options:
        anon = options["anon"]
        if anon == ANON_TEMPLATE:  # what our publisher writes: the reader's $SCIBENCH_S3_ANON decides
            anon = os.environ.get(ANON_ENV, "")
        if not isinstance(anon, (bool, str)) or (isinstance(anon, str) and _TEMPLATE.search(anon)):
            raise CatalogError(f"{url}: entry {entry!r} storage option anon={_short(anon)} is not true/false")
        out["anon"] = is_truthy(anon)
    return out


def _refuse_keys(mapping: Mapping, allowed: frozenset, what: str, where: str = "") -> None:
    """A :class:`CatalogError` naming the keys of ``mapping`` outside ``allowed``."""
    bad = sorted(str(k) for k in mapping if k not in allowed)
    if bad:
        raise CatalogError(f"{what} {', '.join(bad)} not allowed{where} (allowed: {', '.join(sorted(allowed))})")


def load_checked(text: str, url: str, storage_options: Mapping[str, Any] | None = None,
                 allow_outside: bool = False) -> dict:
    """A catalog we did not ship, as a plain checked mapping with ``{{ CATALOG_DIR }}`` rendered.

    Each entry's ``args.storage_options`` becomes its allow-listed options overlaid with the
    reader's ``storage_options``; each ``urlpath`` must lie under the catalog's folder unless
    ``allow_outside``. Anything else a catalog could ask for is a :class:`CatalogError`.
    """


    try:
        cat = yaml_load(text)
    except (yaml.YAMLError, ValueError) as err:
        raise CatalogError(f"{url}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(cat, Mapping) or not isinstance(cat.get("sources"), Mapping):
        raise CatalogError(f"{url}: not a catalog (a mapping with 'sources')")
    _refuse_keys(cat, _TOP_KEYS, f"{url}: top-level key(s)", " in a catalog we did not ship")
    meta = cat.get("metadata") or {}
    if not isinstance(meta, Mapping) or "parameters" in meta:
        raise CatalogError(f"{url}: a catalog we did not ship may declare no parameters")
    folder = catalog_dir(url)
    sources = {}
    for name, entry in cat["sources"].items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("args"), Mapping):
            raise CatalogError(f"{url}: entry {name!r} is not a mapping with 'args'")
        _refuse_keys(entry, _ENTRY_KEYS, f"{url}: entry {name!r} key(s)")
        if entry.get("driver") not in CATALOG_DRIVERS:
            raise CatalogError(f"{url}: entry {name!r} driver {_short(entry.get('driver'))} not allowed "
                               f"(allowed: {', '.join(sorted(CATALOG_DRIVERS))})")
        args = dict(entry["args"])
        _refuse_keys(args, _ARG_KEYS, f"{url}: entry {name!r} argument(s)")
        options = _catalog_options(name, args.pop("storage_options", None), url)
        if not isinstance(args.get("urlpath"), str):
            raise CatalogError(f"{url}: entry {name!r} has no urlpath string")
        args["urlpath"] = _CATALOG_DIR.sub(lambda _: folder, args["urlpath"])
        checked = {**{k: v for k, v in entry.items() if k != "args"}, "driver": OUR_DRIVER, "args": args}
        _refuse_templates(checked, url, f"entry {name!r}")
        try:
            check_within(folder, args["urlpath"], allow_escape=allow_outside,
                         what=f"catalog entry {name!r} store")
        except PathEscapeError as err:
            raise PathEscapeError(f"{url}: {err}") from None
        merged = {**options, **dict(storage_options or {})}
        if merged:
            args["storage_options"] = merged
        sources[str(name)] = checked
    out = {"metadata": dict(meta), "sources": sources}
    _refuse_templates(out["metadata"], url, "metadata")
    for key in ("name", "description"):
        if key in cat:
            _refuse_templates(cat[key], url, key)
            out[key] = cat[key]
    return out


class CheckedCatalog(YAMLFileCatalog):
    """An intake catalog built from a :func:`load_checked` mapping: no templates left to render,
    and intake's ``env()``/``shell()`` are off besides."""

    def __init__(self, checked: Mapping[str, Any], folder: str, **kwargs) -> None:
        self._checked_text = yaml.safe_dump(dict(checked), sort_keys=False)
        self._checked_dir = folder
        super().__init__(path=posixpath.join(folder, "catalog.yaml"), autoreload=False, getenv=False,
                         getshell=False, **kwargs)

    def _load(self, reload: bool = False) -> None:
        if getattr(self, "_checked_loaded", False) and not reload:
            return
        self._dir = self._checked_dir
        self.parse(self._checked_text)
        self._checked_loaded = True


def entry_location(cat: intake.catalog.Catalog, name: str):
    """The :class:`StoreLocation` (URL and storage options) behind a catalog entry, as the catalog resolved it."""

    if name not in cat:
        raise KeyError(f"catalog has no entry {name!r}; entries: {', '.join(sorted(cat))}")
    data = getattr(cat, name).reader(chunks={}).data
    return StoreLocation(data.url, dict(data.storage_options or {}))


def entry_metadata(cat: intake.catalog.Catalog, name: str) -> dict:
    """The metadata an entry declares (description, licence, sizes, chunking, benchmark, ...)."""
    if name not in cat:
        raise KeyError(f"catalog has no entry {name!r}; entries: {', '.join(sorted(cat))}")
    desc = cat._entries[name].describe()
    return {"description": desc.get("description", ""), **(desc.get("metadata") or {})}
