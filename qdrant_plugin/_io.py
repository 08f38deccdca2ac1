"""Small file helpers: atomic JSON writes and an exclusive directory lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any, Optional

from gcl_train.fileio import atomic_write_json as _atomic_write_json

from .errors import StoreLockedError


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON (indent 1, sorted keys) durably: temp file, fsync, ``os.replace``, fsync dir.

    A reader sees the old file or the new one, never a torn one, even after a kill or a
    power loss. The writer is `gcl_train.fileio` (standard library only, so this import
    does not pull in torch).
    """
    _atomic_write_json(path, obj, indent=1, sort_keys=True, durable=True)


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
