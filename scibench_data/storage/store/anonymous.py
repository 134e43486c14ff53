"""Anonymous (public) reads of published stores: the reader's switch ``$SCIBENCH_S3_ANON`` and the
catalog template our publisher writes for it. Shared by the catalog (which reads it) and the publisher
(which writes it), so neither imports the other for it."""

from __future__ import annotations

from typing import Any

ANON_ENV = "SCIBENCH_S3_ANON"
#: Rendered by intake at open time: "true" when $SCIBENCH_S3_ANON is 1/true/yes, else "" (falsy for s3fs).
ANON_TEMPLATE = "{{ 'true' if (env('" + ANON_ENV + "') or '') | lower in ['1', 'true', 'yes'] else '' }}"
_TRUE = {"1", "true", "yes", "on"}


def is_truthy(value: Any) -> bool:
    """``True``, or a string that says yes (``1``, ``true``, ``yes``, ``on``; any case) (pure)."""
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)
