"""The scrape manifest: one SQLite file recording every query and every image URL.

It is what makes a rerun resume after Ctrl-C or ``kill -9``: a finished query is not
searched again, a downloaded URL is not fetched again, a failed one is retried up to a
limit. WAL mode lets the studio read counts while a scrape writes; inside one process
all writes go through one connection guarded by a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

URL_STATES = ("pending", "downloaded", "duplicate", "failed", "rejected")
QUERY_STATES = ("pending", "running", "done", "failed", "blocked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    dataset     TEXT NOT NULL,
    engine      TEXT NOT NULL,
    breed       TEXT NOT NULL,
    query       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    found       INTEGER NOT NULL DEFAULT 0,
    max_results INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  REAL,
    updated_at  REAL,
    PRIMARY KEY (dataset, engine, breed, query)
);
CREATE TABLE IF NOT EXISTS urls (
    dataset     TEXT NOT NULL,
    breed       TEXT NOT NULL,
    url         TEXT NOT NULL,
    engine      TEXT,
    query       TEXT,
    state       TEXT NOT NULL DEFAULT 'pending',
    http_status INTEGER,
    bytes       INTEGER,
    sha256      TEXT,
    path        TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL,
    updated_at  REAL,
    PRIMARY KEY (dataset, breed, url)
);
CREATE INDEX IF NOT EXISTS urls_sha ON urls (dataset, sha256);
CREATE INDEX IF NOT EXISTS urls_state ON urls (dataset, breed, state);
"""


class ManifestError(RuntimeError):
    """The manifest file cannot be opened or is not a scrape manifest."""


class Manifest:
    """``Manifest(path)``: open (creating if needed) a scrape manifest. Thread-safe."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.root = self.path.parent.resolve()
        self._lock = threading.RLock()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                           check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._db.row_factory = sqlite3.Row
            self._db.execute("SELECT count(*) FROM urls").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"{self.path}: not a usable scrape manifest ({exc})") from None

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock, self._db:
            return self._db.execute(sql, params)

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- paths -------------------------------------------------------------------------------
    def store_path(self, path: str | os.PathLike) -> str:
        """Paths are kept relative to the manifest's folder (the workspace) when inside it."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def resolve_path(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    # -- queries -----------------------------------------------------------------------------
    def query_record(self, dataset: str, engine: str, breed: str, query: str) -> dict | None:
        rows = self._read("SELECT * FROM queries WHERE dataset=? AND engine=? AND breed=? AND query=?",
                          (dataset, engine, breed, query))
        return dict(rows[0]) if rows else None

    def query_needed(self, dataset: str, engine: str, breed: str, query: str, *,
                     max_results: int, max_attempts: int) -> bool:
        """Whether this query must be (re)searched on this run."""
        rec = self.query_record(dataset, engine, breed, query)
        if rec is None or rec["state"] in ("pending", "running", "blocked"):
            return True  # never run, interrupted, or walled (a captcha passes with time)
        if rec["state"] == "failed":
            return rec["attempts"] < max_attempts
        # done: only again if it stopped at its cap and the cap went up.
        return rec["found"] >= rec["max_results"] and max_results > rec["max_results"]

    def start_query(self, dataset: str, engine: str, breed: str, query: str, max_results: int) -> None:
        now = time.time()
        self._write(
            "INSERT INTO queries (dataset, engine, breed, query, state, max_results, attempts, started_at, updated_at)"
            " VALUES (?,?,?,?, 'running', ?, 1, ?, ?)"
            " ON CONFLICT (dataset, engine, breed, query) DO UPDATE SET state='running', error=NULL,"
            " max_results=excluded.max_results, attempts=attempts+1, started_at=excluded.started_at,"
            " updated_at=excluded.updated_at",
            (dataset, engine, breed, query, max_results, now, now),
        )

    def finish_query(self, dataset: str, engine: str, breed: str, query: str, *, state: str,
                     found: int | None = None, error: str | None = None) -> None:
        if state not in QUERY_STATES:
            raise ValueError(f"unknown query state {state!r}")
        self._write(
            "UPDATE queries SET state=?, found=coalesce(?, found), error=?, updated_at=?"
            " WHERE dataset=? AND engine=? AND breed=? AND query=?",
            (state, found, error, time.time(), dataset, engine, breed, query),
        )

    def queries(self, dataset: str | None = None) -> list[dict]:
        if dataset is None:
            return [dict(r) for r in self._read("SELECT * FROM queries ORDER BY rowid")]
        return [dict(r) for r in self._read("SELECT * FROM queries WHERE dataset=? ORDER BY rowid", (dataset,))]

    # -- urls --------------------------------------------------------------------------------
    def add_urls(self, dataset: str, breed: str, urls: Iterable[str], *, engine: str | None = None,
                 query: str | None = None) -> list[str]:
        """Record found URLs; returns the ones not seen before for this breed."""
        now = time.time()
        new: list[str] = []
        with self._lock, self._db:
            for url in urls:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO urls (dataset, breed, url, engine, query, state, created_at, updated_at)"
                    " VALUES (?,?,?,?,?, 'pending', ?, ?)",
                    (dataset, breed, url, engine, query, now, now),
                )
                if cur.rowcount:
                    new.append(url)
        return new

    def urls_to_fetch(self, dataset: str, breeds: Iterable[str] | None = None, *,
                      max_attempts: int = 3) -> list[tuple[str, str]]:
        """(url, breed) still to download: pending ones, and failed ones under the retry limit."""
        rows = self._read(
            "SELECT url, breed FROM urls WHERE dataset=? AND (state='pending' OR (state='failed' AND attempts<?))"
            " ORDER BY rowid",
            (dataset, max_attempts),
        )
        wanted = set(breeds) if breeds is not None else None
        return [(r["url"], r["breed"]) for r in rows if wanted is None or r["breed"] in wanted]

    def record_result(self, dataset: str, breed: str, url: str, *, state: str, http_status: int | None = None,
                      nbytes: int | None = None, sha256: str | None = None, path: str | os.PathLike | None = None,
                      error: str | None = None) -> None:
        if state not in URL_STATES:
            raise ValueError(f"unknown url state {state!r}")
        stored = self.store_path(path) if path is not None else None
        self._write(
            "UPDATE urls SET state=?, http_status=?, bytes=?, sha256=?, path=?, error=?, attempts=attempts+1,"
            " updated_at=? WHERE dataset=? AND breed=? AND url=?",
            (state, http_status, nbytes, sha256, stored, error, time.time(), dataset, breed, url),
        )

    def find_sha(self, dataset: str, sha256: str) -> Path | None:
        """Where an image with this content hash is already stored (and still on disk)."""
        for row in self._read("SELECT path FROM urls WHERE dataset=? AND sha256=? AND state='downloaded'",
                              (dataset, sha256)):
            if row["path"]:
                p = self.resolve_path(row["path"])
                if p.is_file():
                    return p
        return None

    def url_record(self, dataset: str, breed: str, url: str) -> dict | None:
        rows = self._read("SELECT * FROM urls WHERE dataset=? AND breed=? AND url=?", (dataset, breed, url))
        return dict(rows[0]) if rows else None

    def url_rows(self, dataset: str | None = None, breed: str | None = None,
                 states: Iterable[str] | None = None) -> list[dict]:
        sql, params = "SELECT * FROM urls WHERE 1=1", []
        if dataset is not None:
            sql, params = sql + " AND dataset=?", params + [dataset]
        if breed is not None:
            sql, params = sql + " AND breed=?", params + [breed]
        rows = [dict(r) for r in self._read(sql + " ORDER BY rowid", tuple(params))]
        if states is not None:
            keep = set(states)
            rows = [r for r in rows if r["state"] in keep]
        return rows

    def breed_counts(self, dataset: str | None = None, breed: str | None = None) -> dict[str, dict[str, int]]:
        """Per breed: found (all URLs), and how many are pending/downloaded/duplicate/failed/rejected."""
        sql = "SELECT breed, state, count(*) AS n FROM urls WHERE 1=1"
        params: tuple = ()
        if dataset is not None:
            sql, params = sql + " AND dataset=?", params + (dataset,)
        if breed is not None:
            sql, params = sql + " AND breed=?", params + (breed,)
        out: dict[str, dict[str, int]] = {}
        for row in self._read(sql + " GROUP BY breed, state", params):
            counts = out.setdefault(row["breed"], empty_counts())
            counts[row["state"]] = counts.get(row["state"], 0) + row["n"]
            counts["found"] += row["n"]
        return dict(sorted(out.items()))


def empty_counts() -> dict[str, int]:
    return {"found": 0, **{state: 0 for state in URL_STATES}}
