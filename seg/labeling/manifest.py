"""The workspace manifest: one SQLite file recording every import and every saved version.

SQLite because its transactions are atomic and it serialises writers across threads
and processes; ``Manifest.write()`` holds the database's write lock (BEGIN IMMEDIATE)
so the caller can allocate a version number and put files in place as one step.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_NAME = "manifest.sqlite3"
#: Seconds a writer waits for another session's save before giving up.
LOCK_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    source TEXT,
    digest TEXT,
    width INTEGER,
    height INTEGER,
    added_at TEXT
);
CREATE INDEX IF NOT EXISTS images_digest ON images(digest);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    split TEXT NOT NULL,
    saved_at TEXT NOT NULL,
    model TEXT,
    changed_pixels INTEGER,
    total_pixels INTEGER,
    session TEXT,
    sha256 TEXT,
    PRIMARY KEY (name, version)
);
"""


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class VersionRecord:
    """One saved version of one image's label."""

    name: str
    version: int
    split: str
    saved_at: str
    model: str | None
    changed_pixels: int | None
    total_pixels: int | None
    session: str | None
    sha256: str | None


class Manifest:
    """Thin wrapper over the SQLite file; a connection per call keeps it thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.recovered_from: Path | None = None
        try:
            self._create()
        except sqlite3.OperationalError:
            raise  # locked, read-only, missing folder: the file may be fine, never move it
        except sqlite3.DatabaseError:
            # A foreign or corrupt file must not make the workspace unusable: set it aside.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            self.path.replace(aside)
            self.recovered_from = aside
            self._create()

    def _create(self) -> None:
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_TIMEOUT_S * 1000)}")
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Exclusive write transaction: committed on success, rolled back on any error."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        conn = self._connect()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    # -- images ---------------------------------------------------------------------
    @staticmethod
    def add_image(conn: sqlite3.Connection, name: str, source: str, digest: str, width: int, height: int) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)", (name, source, digest, width, height, utc_now())
        )

    @staticmethod
    def name_for_digest(conn: sqlite3.Connection, digest: str) -> str | None:
        row = conn.execute("SELECT name FROM images WHERE digest = ? ORDER BY added_at LIMIT 1", (digest,)).fetchone()
        return row[0] if row else None

    def image_source(self, name: str) -> str | None:
        rows = self._read("SELECT source FROM images WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # -- versions -------------------------------------------------------------------
    @staticmethod
    def latest_version(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
        return int(row[0] or 0)

    @staticmethod
    def add_version(conn: sqlite3.Connection, record: VersionRecord) -> None:
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.version,
                record.split,
                record.saved_at,
                record.model,
                record.changed_pixels,
                record.total_pixels,
                record.session,
                record.sha256,
            ),
        )

    def versions(self, name: str | None = None) -> list[VersionRecord]:
        """Saved versions, oldest first (of one image, or of all)."""
        if name is None:
            rows = self._read("SELECT * FROM versions ORDER BY name, version")
        else:
            rows = self._read("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))
        return [VersionRecord(*row) for row in rows]

    def latest(self, name: str) -> VersionRecord | None:
        rows = self._read("SELECT * FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", (name,))
        return VersionRecord(*rows[0]) if rows else None
