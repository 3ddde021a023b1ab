"""Trying changes on a store and undoing them: what-if measurements (the simulated reviewer benchmark)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stpp.store.db import Store, StoreError


@contextlib.contextmanager
def rolled_back(store: Store) -> Iterator[Store]:
    """A write transaction on this thread's connection that is rolled back at the end, however it ends.

    Every store function called inside (on this thread) writes into it, since their own
    transactions become savepoints of it, and reads see those writes; other connections see none
    of them, and once it ends the rows are as they were. Files the calls wrote (a reviewed mask)
    stay in the workspace, unreferenced: :func:`~stpp.store.housekeeping.remove_orphan_files` finds them.
    The write lock is held throughout, so a worker writing the same store waits.

    Raises:
        StoreError: this thread is already inside a transaction (its writes would be undone too).
    """
    conn = store.db.conn
    if conn.in_transaction:
        raise StoreError("already inside a transaction: a rolled-back trial would undo its writes too")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield store
    finally:
        conn.execute("ROLLBACK")
