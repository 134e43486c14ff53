"""Names joined onto a root cannot escape it (issue 9, access): the pure confinement function,
property-tested, and the places that use it (catalog store URLs, publish versions, pull subsets,
manifest keys)."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scibench_data.catalog import store_url
from scibench_data.storage.distribution.publish import PublishTarget
from scibench_data.storage.distribution.pull import Subset
from scibench_data.storage.store.confine import (
    PathEscapeError,
    check_within,
    confine,
    relative_part,
)
from scibench_data.storage.store.manifest import ManifestEntry, ManifestError

ROOTS = st.sampled_from(["/data/root", "/data/root/", "rel/dir", "s3://bucket/prefix", "s3://bucket",
                         "file:///tmp/x", "/"])
SEGMENTS = st.one_of(st.sampled_from(["..", ".", "", "a", "b.zarr", "v1", "s3:", "c"]),
                     st.text(alphabet="abc.-_", min_size=1, max_size=4))
NAMES = st.one_of(
    st.lists(SEGMENTS, min_size=0, max_size=6).map("/".join),
    st.sampled_from(["/etc/passwd", "s3://other-bucket/x", "file:///etc", "//x", "a/../../b", "../x"]),
)


def _escapes(name: str) -> bool:
    """An independent statement of the rule: walk the segments, tracking depth below the root."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", name) or name.startswith("/"):
        return True
    depth = 0
    for seg in name.split("/"):
        if seg == "..":
            depth -= 1
            if depth < 0:
                return True
        elif seg not in ("", "."):
            depth += 1
    return depth == 0  # names the root itself (or nothing)


@settings(max_examples=400, deadline=None)
@given(root=ROOTS, name=NAMES)
def test_confine_either_refuses_or_stays_strictly_below_the_root(root, name):
    try:
        out = confine(root, name)
    except PathEscapeError as err:
        assert _escapes(name), (root, name)
        assert repr(name) in str(err)
        return
    assert not _escapes(name), (root, name, out)
    rel = relative_part(name)
    assert ".." not in rel.split("/") and not rel.startswith("/")
    check_within(root, out)  # below the root by the other function's rule too
    assert confine(root, rel) == out  # normalising is idempotent
    assert out.endswith("/" + rel)


@settings(max_examples=200, deadline=None)
@given(name=NAMES)
def test_opt_in_allows_explicit_names(name):
    out = confine("/data/root", name, allow_escape=True)
    if name.startswith("/") or re.match(r"[a-z0-9]+://", name):
        assert out == name
    else:
        assert out == posixpath.normpath(posixpath.join("/data/root", name or "."))


@settings(max_examples=200, deadline=None)
@given(root=ROOTS, name=st.lists(st.text(alphabet="abcz019_-", min_size=1, max_size=6), min_size=1, max_size=4))
def test_plain_names_are_never_refused(root, name):
    out = confine(root, "/".join(name))
    assert out.endswith("/".join(name))
    check_within(root, out)


def test_check_within_refuses_other_buckets_prefixes_and_climbing():
    assert check_within("s3://b/p/", "s3://b/p/ds/v1") == "s3://b/p/ds/v1"
    for url in ("s3://other/p/ds", "s3://b/px/ds", "s3://b/p/../q/ds", "gs://b/p/ds", "/b/p/ds"):
        with pytest.raises(PathEscapeError, match="outside s3://b/p"):
            check_within("s3://b/p", url)
    assert check_within("s3://b/p", "s3://other/x", allow_escape=True) == "s3://other/x"


def test_store_url_refuses_escaping_entry_names_unless_allowed(tmp_path):
    root = str(tmp_path / "root")
    assert store_url("cloudmask_ds1", root) == f"{root}/cloudmask_ds1.zarr"
    for bad in ("../outside", "/etc/x", "s3://other-bucket/x", "a/../../x"):
        with pytest.raises(PathEscapeError, match="catalog entry name"):
            store_url(bad, root)
    assert store_url("../outside", root, allow_escape=True) == f"{tmp_path}/outside.zarr"


def test_publish_versions_and_pull_variables_are_confined():
    target = PublishTarget("s3://bucket/prefix")
    assert target.version_url("cloudmask_ds1", 3) == "s3://bucket/prefix/cloudmask_ds1/v3"
    for bad in ("../other", "/abs", "s3://other-bucket"):
        with pytest.raises(ValueError):
            target.version_url(bad, 1)
    for bad in ("../image", "/image", "image/c/0", "s3://x/image", ".."):
        with pytest.raises(PathEscapeError):
            Subset(variables=(bad,))
    assert Subset(variables=("image",)).variables == ("image",)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "s3://other/x", "a/../../x", "./a", "a//b", "."])
def test_manifest_keys_that_are_not_plain_relative_keys_are_refused(key):
    with pytest.raises(ManifestError, match="refusing the manifest"):
        ManifestEntry(key, 1, "0" * 64)
