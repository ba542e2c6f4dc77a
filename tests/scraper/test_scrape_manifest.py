"""The SQLite manifest: query/URL states, what a rerun redoes, counts, CSV export."""

from __future__ import annotations

import csv
import sqlite3
import threading

import pytest

from scraper.export import write_breed_csvs
from scraper.manifest import Manifest, ManifestError


def test_urls_states_and_counts(tmp_path):
    m = Manifest(tmp_path / "scrape.sqlite")
    assert m.add_urls("dogs", "beagles", ["http://a/1", "http://a/2", "http://a/1"], engine="bing", query="q") == [
        "http://a/1", "http://a/2"]
    assert m.add_urls("dogs", "beagles", ["http://a/2", "http://a/3"]) == ["http://a/3"]
    img = tmp_path / "data" / "dogs" / "beagles" / "x.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"jpeg")
    m.record_result("dogs", "beagles", "http://a/1", state="downloaded", http_status=200, nbytes=4, sha256="ab", path=img)
    m.record_result("dogs", "beagles", "http://a/2", state="failed", http_status=500, error="HTTP 500")
    rec = m.url_record("dogs", "beagles", "http://a/1")
    assert rec["path"] == "data/dogs/beagles/x.jpg"  # relative to the workspace
    assert rec["attempts"] == 1 and rec["http_status"] == 200
    assert m.find_sha("dogs", "ab") == img
    assert m.find_sha("other", "ab") is None
    counts = m.breed_counts()
    assert counts == {"beagles": {"found": 3, "pending": 1, "downloaded": 1, "duplicate": 0, "failed": 1, "rejected": 0}}
    # failed ones come back until they reach the attempt limit
    assert m.urls_to_fetch("dogs", max_attempts=3) == [("http://a/2", "beagles"), ("http://a/3", "beagles")]
    m.record_result("dogs", "beagles", "http://a/2", state="failed", error="HTTP 500")
    assert m.urls_to_fetch("dogs", max_attempts=2) == [("http://a/3", "beagles")]
    assert m.urls_to_fetch("dogs", ["boxers"]) == []
    with pytest.raises(ValueError):
        m.record_result("dogs", "beagles", "http://a/3", state="weird")
    m.close()


def test_wal_lets_another_reader_follow(tmp_path):
    path = tmp_path / "scrape.sqlite"
    m = Manifest(path)
    assert m._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    m.add_urls("dogs", "beagles", ["http://a/1"])
    reader = Manifest(path, readonly=True)
    assert reader.breed_counts()["beagles"]["found"] == 1
    m.add_urls("dogs", "boxers", ["http://a/1"])
    assert set(reader.breed_counts()) == {"beagles", "boxers"}
    reader.close()
    m.close()


def test_query_resume_rules(tmp_path):
    m = Manifest(tmp_path / "scrape.sqlite")
    key = ("dogs", "bing", "beagles", "beagles dog pictures")
    assert m.query_needed(*key, max_results=10, max_attempts=3)
    m.start_query(*key, 10)
    assert m.query_needed(*key, max_results=10, max_attempts=3)  # killed while running: search again
    m.finish_query(*key, state="done", found=4)
    assert not m.query_needed(*key, max_results=10, max_attempts=3)
    assert not m.query_needed(*key, max_results=50, max_attempts=3)  # it ran out of results below its cap
    m.start_query(*key, 10)
    m.finish_query(*key, state="done", found=10)
    assert m.query_needed(*key, max_results=50, max_attempts=3)  # stopped at the cap; the cap went up
    m.start_query(*key, 10)
    m.finish_query(*key, state="failed", error="no results")
    assert m.query_record(*key)["attempts"] == 3
    assert not m.query_needed(*key, max_results=10, max_attempts=3)
    assert m.query_needed(*key, max_results=10, max_attempts=4)
    m.finish_query(*key, state="blocked", error="captcha")
    assert m.query_needed(*key, max_results=10, max_attempts=3)  # a captcha passes with time


def test_threads_share_one_manifest(tmp_path):
    m = Manifest(tmp_path / "scrape.sqlite")

    def add(i):
        for j in range(50):
            m.add_urls("dogs", f"b{i}", [f"http://x/{j}"])
            m.record_result("dogs", f"b{i}", f"http://x/{j}", state="rejected", error="too small")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c["rejected"] == 50 for c in m.breed_counts().values())


def test_not_a_manifest_is_one_clear_error(tmp_path):
    bad = tmp_path / "scrape.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ManifestError, match="scrape.sqlite: not a usable scrape manifest"):
        Manifest(bad)
    with pytest.raises(ManifestError):
        Manifest(tmp_path / "missing.sqlite", readonly=True)


def test_export_one_csv_per_breed(tmp_path):
    m = Manifest(tmp_path / "scrape.sqlite")
    m.add_urls("dogs", "beagles", ["http://a/1?x=1,2", "http://a/2"])
    m.add_urls("dogs", "shih_tzu", ["http://b/1"])
    m.add_urls("cats", "siamese", ["http://c/1"])
    m.record_result("dogs", "beagles", "http://a/2", state="failed")
    out = tmp_path / "out"
    written = write_breed_csvs(m, out, dataset="dogs")
    assert sorted(p.name for p in out.iterdir()) == ["beagles.csv", "shih_tzu.csv"]
    with open(written["beagles"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"url": "http://a/1?x=1,2", "breed": "beagles"}, {"url": "http://a/2", "breed": "beagles"}]
    only_failed = write_breed_csvs(m, tmp_path / "failed", dataset="dogs", states=("failed",))
    assert list(only_failed) == ["beagles"]
    assert (tmp_path / "failed" / "beagles.csv").read_text().splitlines() == ["url,breed", "http://a/2,beagles"]
    # URLs found under the original's spelling ("jack russel") go out with today's
    m.add_urls("dogs", "jack_russel_terrier", ["http://d/1"])
    m.add_urls("dogs", "jack_russell_terrier", ["http://d/2"])
    jack = write_breed_csvs(m, tmp_path / "jack", dataset="dogs", breeds=["jack russell terrier"])
    assert list(jack) == ["jack_russell_terrier"]
    assert jack["jack_russell_terrier"].read_text().splitlines() == [
        "url,breed", "http://d/1,jack_russell_terrier", "http://d/2,jack_russell_terrier"]
    # the file is a plain SQLite database other tools can read
    with sqlite3.connect(tmp_path / "scrape.sqlite") as db:
        assert db.execute("SELECT count(*) FROM urls").fetchone()[0] == 6
