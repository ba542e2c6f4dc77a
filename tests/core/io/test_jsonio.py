"""core.io.jsonio: atomic JSON, tolerant reads, JSONL append and tail."""

from __future__ import annotations

import json

from core.io.jsonio import append_jsonl, read_json, read_jsonl, read_jsonl_tail, write_json


def test_write_and_read_json(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json(p, {"a": [1, 2]})
    assert read_json(p) == {"a": [1, 2]}
    assert not list(p.parent.glob(".*.tmp"))  # no temp file left behind
    write_json(p, {"b": 1}, indent=2)
    assert json.loads(p.read_text()) == {"b": 1} and "\n" in p.read_text()
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"a": ')
    assert read_json(tmp_path / "bad.json") is None
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert read_json(tmp_path / "bin.json") is None
    assert read_json(tmp_path) is None  # a folder


def test_append_after_a_half_line_starts_a_fresh_line(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"n": 1})
    with open(p, "ab") as fh:
        fh.write(b'{"n": 2, "half')  # a writer killed mid-line
    append_jsonl(p, {"n": 3})
    assert read_jsonl(p) == [{"n": 1}, {"n": 3}]


def test_tail_reads_complete_lines_only_and_restarts_after_a_replace(tmp_path):
    p = tmp_path / "m.jsonl"
    assert read_jsonl_tail(p, 0) == ([], 0)
    p.write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n{"c": ')
    records, off = read_jsonl_tail(p, 0)
    assert records == [{"a": 1}, {"b": 2}]
    assert read_jsonl_tail(p, off) == ([], off)  # the half line waits
    with open(p, "ab") as fh:
        fh.write(b'3}\n')
    assert read_jsonl_tail(p, off) == ([{"c": 3}], p.stat().st_size)
    p.write_bytes(b'{"z": 0}\n')  # replaced by a shorter file
    assert read_jsonl_tail(p, off) == ([{"z": 0}], 9)
