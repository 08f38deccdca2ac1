"""Retries with exponential backoff for calls to a Qdrant server.

Only failures that a second try can fix are retried: connection errors and timeouts, and
HTTP 429 / 502 / 503 / 504. Everything else (a 400 for a bad request, a 404) surfaces at
once. Every write the plugin sends is idempotent (deterministic point ids), so repeating
one after a lost response cannot duplicate data.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = (429, 502, 503, 504)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the wait before try ``n+1`` is ``min(max_delay, base_delay * 2**(n-1))``
    times a jitter factor in [0.5, 1] (so many clients do not retry in lockstep).

    Example:
        >>> RetryPolicy(attempts=3, base_delay=0.5).delays(jitter=False)
        [0.5, 1.0]
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self):
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"retries: expected an int >= 0 (attempts = retries + 1), got {self.attempts - 1!r}")
        if not (self.base_delay >= 0) or not (self.max_delay >= 0):
            raise ValueError(
                f"backoff: expected delays >= 0, got base {self.base_delay!r}, max {self.max_delay!r}"
            )

    def delays(self, jitter: bool = True, rng: Optional[random.Random] = None):
        rng = rng or random
        out = []
        for n in range(1, self.attempts):
            d = min(self.max_delay, self.base_delay * 2 ** (n - 1))
            out.append(d * (0.5 + 0.5 * rng.random()) if jitter else d)
        return out


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (connection trouble, overload)."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        ResponseHandlingException = UnexpectedResponse = ()  # type: ignore
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in RETRY_STATUS
    if isinstance(exc, ResponseHandlingException):
        return True
    try:
        import httpx

        if isinstance(exc, (httpx.TransportError,)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    on_give_up: Callable[[BaseException, int], BaseException],
    sleep: Callable[[float], None] = time.sleep,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Run ``fn``, retrying transient failures by ``policy``.

    Args:
        fn: the call, no arguments.
        policy: attempts and delays.
        what: a short description for the log ("upsert 256 points").
        on_give_up: builds the exception raised after the last failed attempt
            (gets the last error and the number of attempts).
        sleep: injectable for tests.
        transient: which errors to retry.
    """
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not transient(e):
                raise
            if attempt == policy.attempts:
                raise on_give_up(e, attempt) from None
            d = delays[attempt - 1]
            log.warning("%s failed (attempt %d/%d, %s); retrying in %.2fs",
                        what, attempt, policy.attempts, type(e).__name__, d)
            sleep(d)
    raise AssertionError("unreachable")  # pragma: no cover
