"""Small file helpers: atomic JSON writes, JSON reads with clear errors, free-space
accounting for the embedded store, and an exclusive directory lock.

Standard library only: ``qdrant_plugin`` is a library and imports nothing from the
training application.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from typing import Any, Optional

from .errors import CorruptFileError, StoreLockedError


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; some filesystems refuse to open or fsync a directory.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` durably: temp file in the same directory, fsync, ``os.replace``, fsync dir.

    A reader sees the old file or the new one, never a torn one, even after a kill or a
    power loss. On any error (a full disk included) the temp file is removed and the old
    file is left as it was. Parent directories are created.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON (indent 1, sorted keys, final newline) with :func:`atomic_write_bytes`.

    The object is serialised before the file is touched, so an object ``json`` cannot
    encode raises and leaves the old file as it was.
    """
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str, what: str = "file", recover: str = "") -> Optional[Any]:
    """Parsed JSON, or None if the file does not exist.

    A file that exists but is not valid UTF-8 JSON (truncated, overwritten) raises
    :class:`CorruptFileError` naming the file, ``what`` it is, where parsing stopped and,
    if given, ``recover`` (how to get going again).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    hint = f"; {recover}" if recover else ""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}){hint}") from None
    except json.JSONDecodeError as e:
        state = "empty" if not raw.strip() else f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; " \
                                                f"{len(raw)} bytes, truncated or overwritten?)"
        raise CorruptFileError(f"{what} {path} is {state}{hint}") from None


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    return int(shutil.disk_usage(path).free)


def _file_stats(directory: str):
    """`os.stat` of every regular file below `directory` (files removed meanwhile are skipped)."""
    stack = [directory]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        yield e.stat(follow_symlinks=False)
                except FileNotFoundError:  # the engine removed it meanwhile
                    continue


def sparse_bytes(directory: str) -> int:
    """Bytes the files under ``directory`` may still claim from the disk without growing.

    The embedded engine preallocates sparse files (32 MiB WAL segments, payload pages) and
    writes them through ``mmap``; filling such a hole on a full disk kills the process
    with SIGBUS instead of raising an error, so free space must cover the holes too.
    """
    return sum(max(0, st.st_size - st.st_blocks * 512) for st in _file_stats(directory))


def used_bytes(directory: str) -> int:
    """Bytes the files under ``directory`` occupy on disk (like ``du``)."""
    return sum(st.st_blocks * 512 for st in _file_stats(directory))


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


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
