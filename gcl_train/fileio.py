"""Atomic file writes: a temp file in the destination's directory, then `os.replace`.

One helper for every writer in the project (checkpoints, JSON reports, CSV tables, PNGs,
the Qdrant store's schema and markers). A reader sees the old file or the new one, never
a torn one; when the write raises, the old file is untouched and the temp file is gone.

Standard library only, so `qdrant_plugin` and the benchmark scripts can import it
without pulling in torch or the rest of `gcl_train`.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, IO, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; some filesystems refuse to open a directory.
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


def atomic_write(path: PathLike, write: Callable[[IO], Any], *, binary: bool = False,
                 durable: bool = False) -> str:
    """Call `write(f)` on a temp file next to `path`, then move it over `path`.

    Args:
        path: destination; its parent directories are created.
        write: called once with the open temp file (text: UTF-8, newline="" so csv
            writers control line ends; binary: "wb").
        binary: open the temp file in binary mode.
        durable: fsync the file before the rename and the directory after it, so the
            new contents survive a power loss, not only a killed process.

    Returns:
        The path written, as a string.

    Example:
        >>> atomic_write("/tmp/out.txt", lambda f: f.write("hello\\n"))  # doctest: +SKIP
    """
    if not callable(write):
        raise ValueError(f"write: expected a callable taking the open file, got {type(write).__name__}")
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path: expected a str or os.PathLike, got {type(path).__name__}") from None
    if not isinstance(path, str) or not path or os.path.basename(path) in ("", ".", ".."):
        raise ValueError(f"path: expected a file path, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, **mode) as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(directory)
    return path


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 2, sort_keys: bool = False,
                      default: Optional[Callable[[Any], Any]] = None, durable: bool = False) -> str:
    """`json.dump(obj)` plus a final newline, written with `atomic_write`.

    The object is serialised before the file is touched, so an object `json` cannot
    encode raises `TypeError` and leaves the old file as it was.

    Args:
        path: destination (parent directories are created).
        obj: anything `json.dumps` accepts with the given `default`.
        indent, sort_keys, default: as in `json.dumps`.
        durable: as in `atomic_write`.

    Returns:
        The path written.

    Example:
        >>> atomic_write_json("/tmp/summary.json", {"step": 3})  # doctest: +SKIP
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return atomic_write(path, lambda f: f.write(text), durable=durable)


__all__ = ["atomic_write", "atomic_write_json"]
