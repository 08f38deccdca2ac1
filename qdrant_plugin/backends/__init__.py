"""Storage backends and the one place that picks among them."""

from __future__ import annotations

import os
from typing import Any, Optional

from ..retry import RetryPolicy
from .base import Backend, RawHits, RawRecord

__all__ = ["Backend", "RawHits", "RawRecord", "backend_kind", "open_backend"]


def backend_kind(location: Any) -> str:
    """``"local"`` for ``":memory:"``, ``"remote"`` for ``http(s)://...``, else ``"edge"`` (a directory).

    Example:
        >>> backend_kind("./store"), backend_kind(":memory:"), backend_kind("https://q.example:6333")
        ('edge', 'local', 'remote')
    """
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    if not isinstance(location, str) or not location:
        raise ValueError(
            f"location: expected a directory path, ':memory:' or an http(s):// URL, got {location!r}"
        )
    if location == ":memory:":
        return "local"
    if location.startswith(("http://", "https://")):
        return "remote"
    if "://" in location:
        raise ValueError(
            f"location: unsupported scheme in {location.split('://', 1)[0]!r}://...; expected a "
            f"directory path, ':memory:' or an http(s):// URL"
        )
    return "edge"


def open_backend(
    location: Any,
    collection: str,
    api_key: Optional[str] = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    disk_check: bool = True,
) -> Backend:
    """Build the backend for ``location`` (nothing is read or created yet).

    ``disk_check`` (embedded store only): refuse writes the disk has no room for, before
    they start (see ``backends/edge.py``); False skips the check.
    """
    kind = backend_kind(location)
    if not isinstance(disk_check, bool):
        raise ValueError(f"disk_check: expected True or False, got {disk_check!r}")
    if kind == "edge":
        if api_key is not None:
            raise ValueError("api_key: only used with a Qdrant server URL, not with an embedded store")
        from .edge import EdgeBackend

        return EdgeBackend(os.fspath(location), collection, disk_check=disk_check)
    from .client import ClientBackend

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an int >= 0, got {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(f"backoff: expected seconds >= 0, got {backoff!r}")
    policy = RetryPolicy(attempts=retries + 1, base_delay=float(backoff))
    return ClientBackend(location, collection, api_key=api_key, timeout=timeout, retry=policy)
