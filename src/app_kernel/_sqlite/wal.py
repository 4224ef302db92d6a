"""Put a SQLite file in WAL mode while other processes may be opening it too.

Processes that start together against a new file all ask to switch it to WAL.
Switching takes the write lock, and SQLite refuses it at once, without calling
the busy handler, while another connection holds that lock on a file still in
rollback mode. So the switch is retried with a growing pause until the busy
timeout. Once the file is in WAL mode, reading the mode needs no lock at all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ("ensure_wal_file", "retry_while_busy", "switch_to_wal")

T = TypeVar("T")

_FIRST_PAUSE_SECONDS = 0.005
_LONGEST_PAUSE_SECONDS = 0.2


def switch_to_wal(conn: sqlite3.Connection) -> None:
    """Set WAL mode unless the file is in it already (that check takes no lock)."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")


def retry_while_busy(step: Callable[[], T], *, timeout_seconds: float) -> T:
    """Run ``step``, again after a pause while it fails with "database is locked".

    Blocks its thread: call it from a worker thread, never the event loop. Any
    other error, or a busy one past the timeout, is raised as it came.
    """
    deadline = time.monotonic() + timeout_seconds
    pause = _FIRST_PAUSE_SECONDS
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)


def ensure_wal_file(path: Path, *, timeout_seconds: float) -> None:
    """Create ``path`` if needed and leave it in WAL mode (which the file keeps)."""
    conn = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None)
    try:
        retry_while_busy(lambda: switch_to_wal(conn), timeout_seconds=timeout_seconds)
    finally:
        conn.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # Extended codes such as SQLITE_BUSY_RECOVERY keep the primary code in the low byte.
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
