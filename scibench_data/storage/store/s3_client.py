"""Which client reads chunks from S3, and with which settings (issue 20).

Read-only Zarr stores on ``s3://`` are read through zarr's :class:`zarr.storage.ObjectStore`
over obstore's ``S3Store`` (Rust, one GET per chunk, ~2.5x less client CPU per GB than s3fs;
docs/performance.md) whenever the caller's s3fs storage options mean the same thing to obstore.
Zarr metadata (``zarr.json``, ``.zattrs`` ...), listings and ``exists`` go through s3fs (one GET
each), so opening a store never starts obstore's runtime. s3fs stays for writes, listings, pull and
verify, and for reads whose options only s3fs understands: a named ``profile``, credentials that
only botocore's chain finds (``~/.aws``, instance metadata, SSO), real AWS without a known region
(botocore follows the bucket's region redirect, obstore does not), any option not translated here,
and a process forked from one that had sent an obstore request (its tokio runtime, started by the
first request, does not survive ``fork``). So DataLoader workers forked from a parent that only
opened the store read chunks through obstore; forked after the parent read chunks through obstore
(xarray's ``open_zarr`` loads the coordinates: the catalog's ``to_dask()``), they read through s3fs;
workers started with ``forkserver`` or ``spawn`` use obstore. ``$SCIBENCH_S3_CLIENT`` chooses:
``auto`` (default), ``s3fs``, or ``obstore`` (an option it cannot honour is then an error).

Both clients behave as :mod:`scibench_data.storage.store.retries` documents: the same number of requests
for a read that keeps failing (:func:`botocore_attempts`: ``config_kwargs={"retries": {"max_attempts": N}}``
is N retries to botocore, ``$AWS_MAX_ATTEMPTS`` counts every request; tested by counting a 503 server's
requests), exponential backoff from 1 s up to 20 s (:func:`obstore_retry_config`), ``connect_timeout``
10 s, ``read_timeout`` 60 s (botocore's), anonymous
(unsigned) requests for ``anon=True``, keys from the options or ``$AWS_ACCESS_KEY_ID`` /
``$AWS_SECRET_ACCESS_KEY``, the endpoint from ``endpoint_url`` / ``client_kwargs`` or ``$AWS_ENDPOINT_URL``.

s3fs reads: ``max_concurrency=1`` unless the caller set it, so ``cat_file`` of a whole object is
one GET (with s3fs's default of 10 it sends a HEAD first, to split objects over 50 MB into ranges);
a response cut mid-body is tried 10 times (``retries``; s3fs's default is 5), as obstore does.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from http import HTTPStatus
from typing import Any

from botocore.exceptions import BotoCoreError, EndpointConnectionError
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, ObjectStore

from scibench_data.storage.store.retries import (
    DEFAULT_POLICY,
    RetryPolicy,
    with_retries,
)

CLIENT_ENV = "SCIBENCH_S3_CLIENT"
CLIENTS = ("auto", "s3fs", "obstore")
_S3_SCHEMES = ("s3://", "s3a://")
#: botocore's read timeout (seconds per socket read), which s3fs uses unless told otherwise
READ_TIMEOUT_S = 60.0
#: the longest one request may take, body included (obstore's own default is 30 s)
REQUEST_TIMEOUT_S = 300.0
#: botocore's longest wait between attempts (its standard and legacy modes)
MAX_BACKOFF_S = 20.0
_TRUE = ("1", "true", "yes", "on")


class ClientChoiceError(ValueError):
    """``$SCIBENCH_S3_CLIENT=obstore`` with storage options obstore cannot honour, or a bad value."""


def is_s3(url: str) -> bool:
    return str(url).startswith(_S3_SCHEMES)


def chosen_client(env: Mapping[str, str] = os.environ) -> str:
    value = env.get(CLIENT_ENV, "auto").strip().lower() or "auto"
    if value not in CLIENTS:
        raise ClientChoiceError(f"${CLIENT_ENV}={value!r}: expected one of {', '.join(CLIENTS)}")
    return value


def s3fs_options(url: str, storage_options: Mapping[str, Any], policy: RetryPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """s3fs storage options for our reads and writes: the retry defaults
    (:func:`~scibench_data.storage.store.retries.with_retries`) and ``max_concurrency=1`` (one GET
    per whole-object read), each only where the caller set none; other URLs unchanged."""
    out = with_retries(url, storage_options, policy)  # copies the retries dict botocore rewrites in place
    if is_s3(url):
        out.setdefault("max_concurrency", 1)
    return out


def tune_s3fs(fs: Any, policy: RetryPolicy = DEFAULT_POLICY) -> Any:
    """Give an s3fs filesystem the policy's attempts at a response cut mid-body (s3fs's
    ``retries`` class attribute, 5 by default, not a constructor option); other filesystems unchanged."""
    if type(fs).__name__ == "S3FileSystem" and getattr(fs, "retries", policy.max_attempts) < policy.max_attempts:
        fs.retries = policy.max_attempts
    return fs


@dataclass(frozen=True)
class ObstoreSettings:
    """What an obstore ``S3Store`` is built from; no secret appears in its ``repr``."""

    bucket: str
    prefix: str
    config: dict[str, Any] = field(repr=False)
    client_options: dict[str, Any]
    retry_config: dict[str, Any]

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 URL needs a bucket")


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE) or value == 1


def _seconds(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}") from None
    if out <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return out


_TOP_KEYS = frozenset({"anon", "key", "secret", "token", "endpoint_url", "client_kwargs", "config_kwargs",
                       "max_concurrency", "use_listings_cache", "skip_instance_cache", "asynchronous", "loop"})
_CLIENT_KEYS = frozenset({"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
                          "aws_session_token"})
_CONFIG_KEYS = frozenset({"retries", "connect_timeout", "read_timeout"})


def obstore_settings(url: str, storage_options: Mapping[str, Any], env: Mapping[str, str] = os.environ,
                     policy: RetryPolicy = DEFAULT_POLICY) -> tuple[ObstoreSettings | None, str]:
    """The obstore settings that mean what ``storage_options`` mean to s3fs, or ``(None, reason)``
    where only s3fs can honour them."""
    if not is_s3(url):
        return None, f"{url} is not an s3:// URL"
    so = dict(storage_options)
    unknown = sorted(set(so) - _TOP_KEYS)
    ck = dict(so.get("client_kwargs") or {})
    cfg = dict(so.get("config_kwargs") or {})
    unknown += [f"client_kwargs.{k}" for k in sorted(set(ck) - _CLIENT_KEYS)]
    unknown += [f"config_kwargs.{k}" for k in sorted(set(cfg) - _CONFIG_KEYS)]
    if unknown:
        return None, f"storage options obstore does not take here: {', '.join(unknown)}"
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    config: dict[str, Any] = {}
    anon = _truthy(so.get("anon", False))
    key = so.get("key") or ck.get("aws_access_key_id")
    secret = so.get("secret") or ck.get("aws_secret_access_key")
    token = so.get("token") or ck.get("aws_session_token")
    if anon:
        config["skip_signature"] = True
    elif key and secret:
        config.update(access_key_id=key, secret_access_key=secret)
        if token:
            config["session_token"] = token
    elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY") and not so.get("key"):
        config.update(access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        if env.get("AWS_SESSION_TOKEN"):
            config["session_token"] = env["AWS_SESSION_TOKEN"]
    else:
        return None, "credentials only botocore's chain can find (profile, ~/.aws, instance metadata)"
    endpoint = so.get("endpoint_url") or ck.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3") \
        or env.get("AWS_ENDPOINT_URL")
    region = ck.get("region_name") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        config["endpoint"] = str(endpoint).rstrip("/")
        config["region"] = region or "us-east-1"
    elif region:
        config["region"] = region
    else:
        return None, "AWS without a region (botocore follows the bucket's region redirect; obstore does not)"
    attempts = botocore_attempts(cfg, env, policy)
    connect = _seconds(cfg.get("connect_timeout", policy.connect_timeout), "connect_timeout")
    read = _seconds(cfg.get("read_timeout", READ_TIMEOUT_S), "read_timeout")
    retry = obstore_retry_config(attempts, connect, read)
    client = {"connect_timeout": timedelta(seconds=connect), "read_timeout": timedelta(seconds=read),
              "timeout": timedelta(seconds=max(REQUEST_TIMEOUT_S, read)),
              "allow_http": str(config.get("endpoint", "")).startswith("http://")}
    return ObstoreSettings(bucket, prefix.rstrip("/"), config, client, retry), ""


#: botocore's attempts per request when only ``$AWS_RETRY_MODE`` is set (its defaults per mode)
_MODE_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}


def _whole(value: Any, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    return n


def botocore_attempts(config_kwargs: Mapping[str, Any], env: Mapping[str, str] = os.environ,
                      policy: RetryPolicy = DEFAULT_POLICY) -> int:
    """Requests botocore sends for one read that keeps failing (the first one included), from the
    same options it gets: ``retries={"max_attempts": N}`` in ``config_kwargs`` means N *retries*
    (N + 1 requests), ``total_max_attempts`` (what botocore rewrites it to) and ``$AWS_MAX_ATTEMPTS``
    count every request; without either, the policy's ``max_attempts`` is set as retries
    (:func:`~scibench_data.storage.store.retries.with_retries`), unless ``$AWS_RETRY_MODE`` alone is
    set (botocore's default for that mode)."""
    retries = config_kwargs.get("retries")
    retries = retries if isinstance(retries, Mapping) else {}
    if retries.get("total_max_attempts") is not None:
        n = _whole(retries["total_max_attempts"], "total_max_attempts")
    elif retries.get("max_attempts") is not None:
        n = _whole(retries["max_attempts"], "max_attempts") + 1
    elif env.get("AWS_MAX_ATTEMPTS"):
        n = _whole(env["AWS_MAX_ATTEMPTS"], "$AWS_MAX_ATTEMPTS")
    elif env.get("AWS_RETRY_MODE"):
        n = _MODE_ATTEMPTS.get(env["AWS_RETRY_MODE"].strip().lower(), 3)
    else:
        n = policy.max_attempts + 1
    if n < 1:
        raise ValueError(f"max_attempts must give at least one request, got {n}")
    return n


def obstore_retry_config(attempts: int, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """obstore's ``retry_config`` for botocore's retries: ``attempts - 1`` retries; backoff from 1 s,
    doubling, at most :data:`MAX_BACKOFF_S` (botocore's standard mode waits ``rand(0, 1) * min(2**i,
    20)`` s before retry i + 1, obstore ``rand(1 s, 2 x its last wait)``: never longer than botocore's
    bound); and ``retry_timeout`` the longest botocore's retries can take (every bound waited, every
    attempt running into both timeouts), so it never stops obstore before botocore would stop."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    retries = attempts - 1
    waits = sum(min(2.0 ** i, MAX_BACKOFF_S) for i in range(retries))
    budget = waits + attempts * (connect_timeout + read_timeout)
    return {"max_retries": retries, "retry_timeout": timedelta(seconds=budget),
            "backoff": {"init_backoff": timedelta(seconds=1), "max_backoff": timedelta(seconds=MAX_BACKOFF_S),
                        "base": 2}}


#: the process that started obstore's (tokio) runtime here, set by :class:`ObstoreReadStore` just
#: before it sends its first request (the runtime starts at the first request, not when a store is
#: built). A fork of that process must not use obstore: the child inherits a runtime without its
#: threads, and its first request never returns, through a fresh ``S3Store`` too (obstore 0.12.1 keeps
#: one runtime per process; developmentseed/obstore#441; measured 2026-12-02), so such a child reads
#: through s3fs. Zarr metadata, listings and ``exists`` go through s3fs (:data:`METADATA_KEYS`), so a
#: parent that only opens stores (a training script before its DataLoader workers fork) never starts
#: the runtime, and its forked workers read chunks through obstore (tests/storage/test_s3_fork.py)
_obstore_pid: int | None = None

#: zarr's metadata objects: read through s3fs even where chunks are read through obstore (one GET each)
METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def obstore_started_here() -> bool:
    """True once this process has sent an obstore request (its runtime runs here): a process forked
    from it now reads through s3fs; start workers with ``forkserver`` or ``spawn`` to keep obstore."""
    return _obstore_pid == os.getpid()


def forked_after_obstore() -> bool:
    """True in a process forked from one that had started obstore's runtime (unusable here)."""
    return _obstore_pid is not None and _obstore_pid != os.getpid()


def _start_obstore() -> None:
    """Note that this process is about to send an obstore request (which starts its runtime); refuse
    in a process forked after the runtime started (its first request would never return)."""
    global _obstore_pid
    if _obstore_pid == os.getpid():
        return
    if forked_after_obstore():
        raise ClientChoiceError("obstore cannot be used in a process forked from one that had started its runtime "
                                "(tokio is not fork-safe); start workers with forkserver or spawn")
    _obstore_pid = os.getpid()


#: our own small objects beside the arrays (manifest, inventory, markers): read with the metadata
STATE_PREFIX = "_scibench/"


def one_chunk_arrays(key: str, body: bytes) -> set[str]:
    """The paths of the arrays stored in a single chunk that zarr metadata object ``key`` describes
    (an array's ``zarr.json`` or ``.zarray``; a group's consolidated ``zarr.json`` or ``.zmetadata``).
    Those are coordinates and small per-store tables, read once when a dataset opens: they are read
    through s3fs with the metadata, so that opening a dataset with xarray never starts obstore's runtime."""
    name = key.rsplit("/", 1)[-1]
    base = key[: -len(name)].rstrip("/")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()  # zarr reports a bad metadata object itself
    if not isinstance(doc, dict):
        return set()
    found: set[str] = set()

    def visit(path: str, meta: Any) -> None:
        if isinstance(meta, dict) and _in_one_chunk(meta):
            found.add(path.strip("/"))

    if name == "zarr.json":
        visit(base, doc)
        consolidated = doc.get("consolidated_metadata")
        nodes = consolidated.get("metadata") if isinstance(consolidated, dict) else None
        for path, meta in (nodes.items() if isinstance(nodes, dict) else ()):
            visit(f"{base}/{path}", meta)
    elif name == ".zarray":
        visit(base, doc)
    elif name == ".zmetadata":
        nodes = doc.get("metadata")
        for path, meta in (nodes.items() if isinstance(nodes, dict) else ()):
            if str(path).endswith("/.zarray"):
                visit(f"{base}/{str(path)[: -len('/.zarray')]}", meta)
    return found


def _in_one_chunk(meta: dict) -> bool:
    """True for v3 or v2 array metadata whose one chunk (or shard) covers the whole shape."""
    shape = meta.get("shape")
    if meta.get("node_type", "array") != "array" or not isinstance(shape, list):
        return False
    grid = meta.get("chunk_grid")
    chunks = (grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None) \
        if "chunk_grid" in meta else meta.get("chunks")
    if not isinstance(chunks, list) or len(chunks) != len(shape):
        return False
    return all(isinstance(c, int) and isinstance(n, int) and c >= n for n, c in zip(shape, chunks, strict=True))


def is_metadata_key(key: str) -> bool:
    """True for a zarr metadata object's key (``zarr.json``, ``image/zarr.json``, ``.zattrs`` ...)."""
    return key.rsplit("/", 1)[-1] in METADATA_KEYS


def obstore_s3(settings: ObstoreSettings):
    """An obstore ``S3Store`` rooted at the settings' prefix (builds a client; no request is sent)."""
    options: dict[str, Any] = {"prefix": settings.prefix or None, "config": settings.config,
                               "client_options": settings.client_options, "retry_config": settings.retry_config}
    if forked_after_obstore():
        raise ClientChoiceError("obstore cannot be used in a process forked from one that had started its runtime "
                                "(tokio is not fork-safe); start workers with forkserver or spawn")
    return S3Store(settings.bucket, **options)


def _s3fs_store(url: str, storage_options: Mapping[str, Any]):
    """s3fs's read-only ``FsspecStore`` of ``url`` with :func:`s3fs_options`."""
    store = FsspecStore.from_url(url, storage_options=s3fs_options(url, storage_options), read_only=True)
    tune_s3fs(store.fs)
    return store


def read_store(url: str, storage_options: Mapping[str, Any], env: Mapping[str, str] = os.environ):
    """A read-only zarr store of ``url`` (``s3://``): obstore's where it can honour the options
    (:func:`obstore_settings`, with metadata read through s3fs), else s3fs's ``FsspecStore``
    (with :func:`s3fs_options`)."""
    choice = chosen_client(env)
    if choice != "s3fs":
        settings, why = obstore_settings(url, storage_options, env)
        if settings is not None and forked_after_obstore():
            settings, why = None, ("this process was forked from one that had started obstore's runtime "
                                   "(tokio is not fork-safe); start workers with forkserver or spawn")
        if settings is not None:
            return ObstoreReadStore(obstore_s3(settings), read_only=True, metadata=_s3fs_store(url, storage_options))
        if choice == "obstore":
            raise ClientChoiceError(f"${CLIENT_ENV}=obstore cannot read {url}: {why}")
    return _s3fs_store(url, storage_options)


def object_store_url(store) -> str | None:
    """``s3://bucket/prefix`` of a zarr ``ObjectStore`` over an obstore ``S3Store``, else None."""
    inner = getattr(store, "store", None)
    config = getattr(inner, "config", None)
    if not isinstance(config, Mapping) or "bucket" not in config:
        return None
    prefix = str(getattr(inner, "prefix", None) or "").strip("/")
    return f"s3://{config['bucket']}/{prefix}".rstrip("/")


class ObstoreReadStore(ObjectStore):
    """zarr's :class:`~zarr.storage.ObjectStore` that reads chunks through obstore and zarr metadata
    (:data:`METADATA_KEYS`), listings, ``exists`` and sizes through ``metadata``, an s3fs store of the
    same URL and options, where one is given: opening a store then never starts obstore's runtime
    (:data:`_obstore_pid`), so processes forked after it can still use obstore.

    Failures are one-line Python errors on both clients: refused credentials -> :class:`PermissionError`;
    an unreachable server -> :class:`ConnectionError` (``Could not connect to the endpoint URL: ...``,
    botocore's words); a timeout -> :class:`TimeoutError`; any other failure after the retries ->
    :class:`ConnectionError`. obstore's messages carry a multi-line debug dump (never the secret);
    only its first line is kept."""

    def __init__(self, store: Any, *, read_only: bool = True, metadata: Any = None) -> None:
        super().__init__(store, read_only=read_only)
        self.metadata = metadata
        self.one_chunk: set[str] = set()  # arrays in one chunk (coordinates): read with the metadata

    def _through_s3fs(self, key: str) -> bool:
        """Metadata, our state objects and one-chunk arrays go through s3fs (when it is given)."""
        if self.metadata is None:
            return False
        if is_metadata_key(key) or key.startswith(STATE_PREFIX):
            return True
        return any(key.startswith(f"{a}/") if a else True for a in self.one_chunk)  # "": the root is the array

    def with_read_only(self, read_only: bool = False) -> ObstoreReadStore:
        return type(self)(self.store, read_only=read_only, metadata=self.metadata)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if self._through_s3fs(key):
            try:
                got = await self.metadata.get(key, prototype, byte_range)
            except Exception as err:  # noqa: BLE001 - s3fs's failures are translated, others re-raised
                raise translate_s3fs_error(err, self._url(key)) from None
            if got is not None and byte_range is None and is_metadata_key(key):
                self.one_chunk |= one_chunk_arrays(key, got.to_bytes())
            return got
        _start_obstore()
        try:
            return await super().get(key, prototype, byte_range)
        except Exception as err:  # noqa: BLE001 - obstore's errors are translated, others re-raised
            raise translate_error(err, self._url(key)) from None

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        if key_ranges and all(self._through_s3fs(k) for k, _ in key_ranges):
            try:
                return list(await self.metadata.get_partial_values(prototype, key_ranges))
            except Exception as err:  # noqa: BLE001
                raise translate_s3fs_error(err, self._url(key_ranges[0][0])) from None
        _start_obstore()
        try:
            return await super().get_partial_values(prototype, key_ranges)
        except Exception as err:  # noqa: BLE001
            raise translate_error(err, self._url(key_ranges[0][0] if key_ranges else "")) from None

    async def exists(self, key: str) -> bool:
        if self.metadata is not None:
            try:
                return bool(await self.metadata.exists(key))
            except Exception as err:  # noqa: BLE001
                raise translate_s3fs_error(err, self._url(key)) from None
        _start_obstore()
        try:
            return await super().exists(key)
        except Exception as err:  # noqa: BLE001
            raise translate_error(err, self._url(key)) from None

    def list(self) -> AsyncGenerator[str, None]:
        if self.metadata is not None:
            return self.metadata.list()
        _start_obstore()
        return super().list()

    def list_prefix(self, prefix: str) -> AsyncGenerator[str, None]:
        if self.metadata is not None:
            return self.metadata.list_prefix(prefix)
        _start_obstore()
        return super().list_prefix(prefix)

    def list_dir(self, prefix: str) -> AsyncGenerator[str, None]:
        if self.metadata is not None:
            return self.metadata.list_dir(prefix)
        _start_obstore()
        return super().list_dir(prefix)

    async def getsize(self, key: str) -> int:
        if self.metadata is not None:
            return int(await self.metadata.getsize(key))
        _start_obstore()
        return await super().getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        if self.metadata is not None:
            return int(await self.metadata.getsize_prefix(prefix))
        _start_obstore()
        return await super().getsize_prefix(prefix)

    def _url(self, key: str) -> str:
        return f"{object_store_url(self)}/{key}"


_ACCESS_HINT = ("check the credentials (key/secret, $AWS_ACCESS_KEY_ID) or read anonymously (anon=True) "
                "if the data is public")


def translate_s3fs_error(err: Exception, url: str) -> Exception:
    """A failure of s3fs reading ``url`` worded as :func:`translate_error` words obstore's: one line
    naming ``url``, the server's code, message and HTTP status, never the secret; the same types
    (:class:`PermissionError`, :class:`ConnectionError`, :class:`TimeoutError`); a missing object and
    errors that are not I/O failures as they are."""
    if isinstance(err, FileNotFoundError) or not isinstance(err, (OSError, BotoCoreError)):
        return err
    response = getattr(err.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code") or "")
    first = str(response.get("Error", {}).get("Message") or err).split("\n", 1)[0].strip()
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    try:
        http = f"{status} {HTTPStatus(int(status)).phrase}" if status else ""
    except ValueError:
        http = str(status)
    why = "; ".join(part for part in (f"{code}: {first}" if code else first, http) if part)
    if isinstance(err, PermissionError):
        return PermissionError(f"{url}: access denied by the server ({why}); {_ACCESS_HINT}")
    if isinstance(err, EndpointConnectionError) or "Could not connect" in first:
        return ConnectionError(f"Could not connect to the endpoint URL for {url}: {first}")
    if isinstance(err, TimeoutError) or "timeout" in type(err).__name__.lower() or "timed out" in first.lower():
        return TimeoutError(f"{url}: timed out: {first}")
    return ConnectionError(f"{url}: {why}")


_XML_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")


def translate_error(err: Exception, url: str) -> Exception:
    """A one-line Python error for an obstore failure reading ``url``; other errors as they are."""
    if not isinstance(err, BaseError) or isinstance(err, FileNotFoundError):
        return err
    text = str(err)
    first = text.split("\n", 1)[0].strip().removeprefix("Generic S3 error: ").strip().rstrip(":")
    code, said = _XML_CODE.search(text), _XML_MESSAGE.search(text)
    if isinstance(err, (PermissionDeniedError, UnauthenticatedError)):
        why = f"{code.group(1)}: {said.group(1) if said else ''}".rstrip(": ") if code else first
        return PermissionError(f"{url}: access denied by the server ({why}); {_ACCESS_HINT}")
    if "kind: Connect" in text or "ConnectError" in text:
        return ConnectionError(f"Could not connect to the endpoint URL for {url}: {first}")
    if "TimedOut" in text or "kind: Timeout" in text or "timed out" in first.lower():
        return TimeoutError(f"{url}: timed out: {first}")
    return ConnectionError(f"{url}: {first}")
