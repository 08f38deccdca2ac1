"""Small file helpers: atomic JSON writes and an exclusive directory lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from typing import Any, Optional

from .errors import StoreLockedError


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON to a temp file in the same directory, fsync, then ``os.replace``.

    A reader sees the old file or the new one, never a torn one, even after a kill.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_json(path: str) -> Optional[Any]:
    """Parsed JSON, or None if the file does not exist."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class DirLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/.lock``.

    ``flock`` locks belong to an open file description, so a second open in the same
    process is refused just like one from another process; the OS drops the lock when the
    holder dies, so a killed ingest never leaves a stale lock behind.
    """

    def __init__(self, directory: str, what: str):
        self.path = os.path.join(directory, ".lock")
        self.fd: Optional[int] = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"{what} is already open (by another MultiFieldIndex in this process or by "
                    f"another process); an embedded store allows one writer at a time. Close the "
                    f"other one first (index.close()), or serve the data from a Qdrant server."
                ) from None
            raise

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
