"""The store's SQLite file: opening, checking and migrating it, and transactions.

One file, ``WORKSPACE/stpp.db``, in WAL mode with foreign keys on and a busy timeout, so the web
app can read while a training worker writes. Each thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import sqlite_utils

from stpp.store.migrations import MIGRATIONS, SCHEMA_VERSION

DB_NAME = "stpp.db"
APPLICATION_ID = 0x53545050  # "STPP": marks the file as ours
BUSY_TIMEOUT_S = 30.0
WORKSPACE_DIRS = ("images", "masks", "runs")


class StoreError(Exception):
    """A store that cannot be opened or used; the message is one line meant for the user."""


def utc_now(timestamp: float | None = None) -> str:
    """The current time (or ``timestamp``, seconds since the epoch) as an ISO 8601 UTC string (the store's
    time format)."""
    moment = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """An open project store: a workspace folder and its SQLite file.

    Use :func:`open_store` to get one. ``store.db`` is a :class:`sqlite_utils.Database` on a
    connection owned by the calling thread.

    Attributes:
        workspace: the workspace folder (absolute).
        db_path: the SQLite file.
    """

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.db_path = workspace / DB_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's database handle (opened on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = _connect(self.db_path)
            with self._lock:
                self._connections.append(conn)
            db = self._local.db = sqlite_utils.Database(conn, execute_plugins=False)
        return db

    def path(self, relative: str | Path) -> Path:
        """The absolute path of a file stored under the workspace."""
        return self.workspace / relative

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints.

        Taking the write lock up front means a waiting writer queues on the busy timeout instead
        of failing with "database is locked" when it upgrades a read transaction.
        """
        db = self.db
        if db.conn.in_transaction:
            with db.atomic():
                yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        else:
            db.conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        return int(self.db.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close every connection this store opened (call when no thread uses it any more)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r})"


def open_store(workspace: str | Path) -> Store:
    """Open (creating if needed) the store in ``workspace`` and bring its schema up to date.

    Creates the folder, ``stpp.db`` and the ``images/``, ``masks/`` and ``runs/`` folders. Nothing
    is written to a workspace that is refused.

    Args:
        workspace: the workspace folder (``STPP_HOME``).

    Raises:
        StoreError: the workspace is a file, cannot be created or is not writable; ``stpp.db`` is
            not an stpp store; or its schema is newer than this code understands.
    """
    workspace = Path(workspace).expanduser().absolute()
    _check_workspace(workspace)
    db_path = workspace / DB_NAME
    if db_path.exists() and not db_path.is_file():
        raise StoreError(f"{db_path} is not a file; cannot use it as the stpp store")
    try:
        _check_version(db_path)
        conn = _connect(db_path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(sqlite_utils.Database(conn, execute_plugins=False), db_path)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the store {db_path}: {exc}") from None
    for name in WORKSPACE_DIRS:
        (workspace / name).mkdir(exist_ok=True)
    return Store(workspace)


def _check_workspace(workspace: Path) -> None:
    if workspace.exists() and not workspace.is_dir():
        raise StoreError(f"workspace {workspace} is a file, not a folder")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create workspace {workspace}: {exc.strerror or exc}") from None
    if not os.access(workspace, os.W_OK | os.X_OK):
        raise StoreError(f"workspace {workspace} is not writable")
    try:
        with tempfile.TemporaryFile(dir=workspace):
            pass
    except OSError as exc:
        raise StoreError(f"workspace {workspace} is not writable: {exc.strerror or exc}") from None


def _connect(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _check_version(db_path: Path) -> None:
    """Refuse, before anything is written, a file from a newer schema or from another program.

    Reads the SQLite header bytes directly: even a read-only connection would leave ``-wal`` and
    ``-shm`` files behind. :func:`_migrate` checks again under the write lock, which also covers a
    header that is stale because the latest commits are still in the WAL.
    """
    if not db_path.exists() or db_path.stat().st_size == 0:
        return
    with open(db_path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise StoreError(f"{db_path} is not an SQLite file; choose another workspace")
    schema_cookie, version, app_id = (int.from_bytes(header[i:i + 4], "big") for i in (40, 60, 68))
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and schema_cookie > 0):
        raise StoreError(f"{db_path} is not an stpp store; choose another workspace")
    _check_newer(db_path, version)


def _check_newer(db_path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store {db_path} has schema version {version}, newer than this stpp "
            f"understands ({SCHEMA_VERSION}); upgrade stpp or use another workspace"
        )


def _migrate(db: sqlite_utils.Database, db_path: Path) -> None:
    db.conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; re-read the version under the lock
    try:
        version = db.conn.execute("PRAGMA user_version").fetchone()[0]
        _check_newer(db_path, version)
        if version == 0 and db.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{db_path} is not an stpp store; choose another workspace")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target - 1](db)
        if version < SCHEMA_VERSION:
            db.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.rollback()
        raise
    db.conn.execute("COMMIT")
