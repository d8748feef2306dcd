"""The retry policy of every reconnecting loop, on the client and on the server.

Client adapters reconnect and resume uploads with it; the server's Redis backplane reconnects
with it. It sits below both (it imports only `siyi_sdk.errors`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
    wait_random,
)

from .errors import CertificateError

__all__ = ["backoff"]


def backoff(
    initial: float,
    maximum: float,
    sleep: Callable[[float], Awaitable[None]],
    retry_on: tuple[type[BaseException], ...],
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """The retry policy of every reconnecting loop: exponential backoff with jitter, forever.

    Args:
        initial: the first delay in seconds (then doubled each time).
        maximum: the ceiling of the delay.
        sleep: how to wait (inject a fast one in tests).
        retry_on: the exceptions that mean "try again"; any other is raised. A
            `CertificateError` is always raised: an untrusted certificate stays untrusted,
            and retrying it forever would hide the cause behind backoff (like a refused key).
        before_sleep: called after each failed attempt (for logging).

    Returns:
        An `AsyncRetrying` to iterate (``async for attempt in backoff(...)``); add a stop
        condition with ``.copy(stop=...)``.
    """
    return AsyncRetrying(
        # Not wait_exponential_jitter: its `initial` is deprecated in tenacity 9 and its
        # replacement `multiplier` does not exist in the tenacity 8 we still support.
        wait=wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial / 2),
        retry=retry_if_exception_type(retry_on) & retry_if_not_exception_type(CertificateError),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
