"""mllog files: well-formed events that name the line that logged them."""

from __future__ import annotations

import pytest

from scibench_data.scoring.mllog import BenchmarkLog, read_events


def test_events_and_intervals_name_the_calling_line(tmp_path):
    with BenchmarkLog(tmp_path / "result-0.txt", "cloudmask", system="test-system") as log:
        log.event("seed", 1234)
        with log.interval("staging"):
            log.start("epoch_start", metadata={"epoch_num": 1})
    events = read_events(tmp_path / "result-0.txt")
    keys = [e["key"] for e in events]
    assert keys[:6] == ["submission_benchmark", "submission_org", "submission_division", "submission_version",
                        "submission_status", "submission_platform"]
    assert keys[6:] == ["seed", "staging_start", "epoch_start", "staging_stop"]
    by_key = {e["key"]: e for e in events}
    assert by_key["submission_platform"]["value"] == "test-system"
    assert {e["event_type"] for e in events} == {"POINT_IN_TIME", "INTERVAL_START", "INTERVAL_END"}
    for key in ("seed", "staging_start", "epoch_start", "staging_stop"):
        assert by_key[key]["metadata"]["file"] == __file__, key
    assert by_key["staging_start"]["metadata"]["lineno"] == by_key["staging_stop"]["metadata"]["lineno"]
    assert by_key["seed"]["metadata"]["lineno"] + 1 == by_key["staging_start"]["metadata"]["lineno"]


def test_malformed_lines_are_named(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(':::MLLOG {"namespace": "", "time_ms": 1}\nnot a log line\n')
    with pytest.raises(ValueError, match=r"bad.txt:1: event lacks"):
        read_events(path)
    path.write_text(':::MLLOG {"key": \n')
    with pytest.raises(ValueError, match=r"bad.txt:1: malformed JSON"):
        read_events(path)
