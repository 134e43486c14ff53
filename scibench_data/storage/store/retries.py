"""How S3 requests are retried when the server goes away, and the error when they give up.

Two layers retry an S3 request (measured against a stopped and restarted
loopback server, see ``tests/storage/test_reliability_faults.py``):

* botocore (inside s3fs) retries connection failures (connection refused,
  connection reset, timeouts) and 5xx/throttling answers. Its default
  ("legacy" mode, 5 attempts) gave up after ~7 s of outage. We set
  ``mode="standard"`` with ``max_attempts=10`` (in a client config botocore
  counts these as retries, so up to 11 requests; exponential backoff with
  jitter, at most 20 s between attempts): an outage of roughly 30 s to
  a minute is ridden out. ``connect_timeout=10`` s keeps a server that accepts
  nothing from hanging a reader for botocore's default 60 s per attempt.
* s3fs retries a request whose connection was cut mid-answer (``retries``,
  short waits): we set 10 attempts where the caller set none (s3fs's default is 5;
  :func:`scibench_data.storage.store.s3_client.s3fs_options`).

Read-only stores on S3 are read through obstore where the options allow
(:mod:`scibench_data.storage.store.s3_client`); it gets the same attempts, backoff
(exponential with jitter, at most 20 s) and ``connect_timeout``, and retries
connection failures, 5xx answers and responses cut mid-body itself.

The defaults apply only to ``s3://`` URLs and only where the caller did not
already choose: their ``config_kwargs`` win, and so do botocore's own
environment variables ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` (e.g.
``AWS_MAX_ATTEMPTS=2`` to fail fast in a script). After the last attempt the error
propagates: the loaders wrap it in :class:`RemoteReadError`, naming the store,
the record and the window, never the credentials. Nothing is returned instead
of the data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_S3_SCHEMES = ("s3://", "s3a://")


class RemoteReadError(OSError):
    """A read from a remote store failed after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """botocore retry settings for S3 clients."""

    max_attempts: int = 10
    mode: str = "standard"
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.mode not in ("legacy", "standard", "adaptive"):
            raise ValueError(f"retry mode must be legacy, standard or adaptive, got {self.mode!r}")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {self.connect_timeout}")


DEFAULT_POLICY = RetryPolicy()


def with_retries(url: str, storage_options: Mapping[str, Any], policy: RetryPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """``storage_options`` with the policy's botocore settings added where the caller set none (S3 URLs only)."""
    out = dict(storage_options)
    if not url.startswith(_S3_SCHEMES):
        return out
    config = dict(out.get("config_kwargs") or {})
    if isinstance(config.get("retries"), Mapping):  # botocore rewrites this dict in place: never the caller's
        config["retries"] = dict(config["retries"])
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        config.setdefault("retries", {"max_attempts": policy.max_attempts, "mode": policy.mode})
    config.setdefault("connect_timeout", policy.connect_timeout)
    out["config_kwargs"] = config
    return out

