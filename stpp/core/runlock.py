"""One writer per run folder: an advisory OS lock on a file inside it.

``fcntl.flock`` belongs to the open file, so the kernel drops it when the holder exits, however it
ends (kill -9 included): a lock file left behind is never a stale lock. The holder writes its PID
into the file, so a refused process can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"
"""The lock file inside a run folder (it marks nothing by existing; only a held lock counts)."""


class RunFolderBusy(RuntimeError):
    """The run folder cannot be taken: another live process holds it (the message names its PID), or
    the path is not a folder."""


class RunFolderLock:
    """The exclusive lock on one run folder, held from :meth:`acquire` until :meth:`release` or exit.

    Use it as a context manager, or keep the object for the life of the process.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        """Take the lock without waiting (nothing to do when this object holds it); creates the folder if needed.

        Raises:
            RunFolderBusy: another process holds it, or ``root`` is not a folder.
        """
        if self._fd is not None:
            return self
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderBusy(f"{self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise RunFolderBusy(f"{self.root} is in use by {who}: one process owns a run folder at a time; "
                                "wait for it to end (or stop it), then retry") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the folder go (the file stays; an unheld lock file means nothing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
