"""Keep user- and catalog-provided names inside a configured root.

Every place that joins a name it did not choose (a data set or catalog entry
name, a ``--variables`` value, an object key from a manifest, a store URL from
a catalog) onto a root goes through :func:`confine` or :func:`check_within`:
``..`` that climbs above the root, absolute paths and URLs (another bucket,
another scheme) and fsspec ``::`` chains (``simplecache::``, ``zip://x::``, ``url::other``)
are refused with a :class:`PathEscapeError` naming the value
and the root, unless the caller opts in with ``allow_escape=True`` (for
locations the user named explicitly).

Pure string functions: POSIX separators (object keys and URLs use ``/``), no
filesystem access, so symbolic links inside a local root are not resolved.
"""

from __future__ import annotations

import posixpath
import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class PathEscapeError(ValueError):
    """A name would resolve outside the root it is joined onto."""


def is_url(text: str) -> bool:
    return bool(_SCHEME.match(text))


def check_chain(url: str, what: str = "location") -> str:
    """``url`` itself unless it is an fsspec chain (``a::b``): a chain opens more than the one
    location it seems to name (a cache, an archive member, a second URL), so it is refused."""
    if not isinstance(url, str):
        raise PathEscapeError(f"{what} {url!r} is not a string")
    if "::" in url:
        raise PathEscapeError(f"{what} {url!r} is a chained URL ('::'); refusing it")
    return url


def relative_part(name: str, what: str = "path", root: str = "the root") -> str:
    """``name`` normalised as a path strictly below a root (``a/./b`` -> ``a/b``), or PathEscapeError."""
    if not isinstance(name, str):
        raise PathEscapeError(f"{what} {name!r} is not a string")
    if "\x00" in name:
        raise PathEscapeError(f"{what} {name!r} contains a NUL character")
    check_chain(name, what)
    if is_url(name):
        raise PathEscapeError(f"{what} {name!r} is a URL, not a name under {root}")
    if name.startswith("/"):
        raise PathEscapeError(f"{what} {name!r} is an absolute path, not a name under {root}")
    norm = posixpath.normpath(name) if name else "."
    if norm == ".":
        raise PathEscapeError(f"{what} {name!r} names nothing under {root}")
    if norm == ".." or norm.startswith("../"):
        raise PathEscapeError(f"{what} {name!r} climbs out of {root} with '..'")
    return norm


def confine(root: str, name: str, *, allow_escape: bool = False, what: str = "path") -> str:
    """``root/name`` with ``name`` normalised; refuses names that leave ``root``.

    ``root`` is a local path or a URL (``s3://bucket/prefix``). With
    ``allow_escape`` an absolute path or URL is returned as given and a relative
    name is joined and normalised even if it climbs above ``root``.
    """
    if not root:
        raise PathEscapeError(f"no root to resolve {what} {name!r} against")
    if allow_escape:
        if is_url(name) or name.startswith("/"):
            return name
        return _join(root, posixpath.normpath(name) if name else ".")
    return _join(root, relative_part(name, what, root))


def check_within(root: str, url: str, *, allow_escape: bool = False, what: str = "location") -> str:
    """``url`` itself if it is ``root`` or below it (same scheme, bucket and prefix), else PathEscapeError.
    A ``::`` chain is refused even with ``allow_escape``."""
    check_chain(url, what)
    if allow_escape or _inside(_normalise(root), _normalise(url)):
        return url
    raise PathEscapeError(f"{what} {url!r} is outside {root}; refusing it (name it explicitly to allow it)")


def _inside(base: str, target: str) -> bool:
    if target == base:
        return True
    if base == ".":  # a relative root: anything relative that does not climb out
        return not (is_url(target) or target.startswith(("/", "../")) or target == "..")
    prefix = base if base.endswith("/") else base + "/"  # "/" and "s3://" end with "/" already
    return target.startswith(prefix)


def _join(root: str, rel: str) -> str:
    base = _normalise(root)
    if rel == ".":
        return base
    if is_url(base):
        head, body = _split_url(base)
        return head + posixpath.normpath(posixpath.join("/" + body, rel)).lstrip("/")
    return posixpath.normpath(posixpath.join(base, rel))


def _split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/p`` -> (``s3://``, ``bucket/p``); ``file:///tmp/x`` -> (``file:///``, ``tmp/x``)."""
    scheme, rest = url.split("://", 1)
    body = rest.lstrip("/")
    return f"{scheme}://{rest[:len(rest) - len(body)]}", body


def _normalise(path: str) -> str:
    """``a/./b/`` -> ``a/b``; ``s3://b//p/`` -> ``s3://b/p``; the scheme and bucket are kept."""
    if is_url(path):
        head, body = _split_url(path)
        return head + (posixpath.normpath("/" + body).lstrip("/") if body else "")
    return posixpath.normpath(path) if path else path
