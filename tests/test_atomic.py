"""``scibench_data.atomic``: every local JSON file of ours is written whole or not at all, by one writer."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from scibench_data.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent


def test_write_json_keeps_the_previous_file_and_no_temporary_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "report.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_json_keeps_the_key_order_when_asked_and_writes_other_types_as_text(tmp_path):
    path = write_json(tmp_path / "run.json", {"z": tmp_path, "a": 1}, sort_keys=False)
    assert list(json.loads(path.read_text())) == ["z", "a"]
    assert json.loads(path.read_text())["z"] == str(tmp_path)


def test_json_files_are_written_by_the_one_writer():
    """No module writes a JSON file its own way (``write_text(json.dumps(...))``, ``json.dump(obj, f)``):
    they all call :func:`scibench_data.atomic.write_json` (store objects: ``StoreLocation.write_json``)."""
    own_way = re.compile(r"write_text\(\s*json\.dumps|json\.dump\(|write_bytes\(\s*json\.dumps")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "scibench_data").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if own_way.search(line)]
    assert hits == []
