"""Per-command figures the dashboard records on the dispatcher's flat path, only while it is on.

`CallRecorder.answer` stands in front of `Dispatcher.answer` (the dispatcher tests one
attribute per request: `Dispatcher.calls`, None while no dashboard is on). Each request costs
two clock reads, one dict lookup and three integer additions into a `CommandFigures`: a count,
an error count and a latency histogram with fixed log-scale buckets (four per octave, 19 %
wide), from which the ticker estimates p50 and p99. Nothing here allocates per request except
the coroutine that times a request answered later (an ``async def`` handler).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from ...packets import Request
    from ..connection import Connection
    from ..dispatch import Dispatcher

__all__ = [
    "BUCKETS",
    "OTHER",
    "CallRecorder",
    "CommandFigures",
    "bucket_of",
    "bucket_upper",
    "quantile",
]

SUB: Final = 2
"""log2 of the buckets per octave (4): a bucket is at most 2 ** (1 / 4) - 1 = 19 % wide."""
MAX_BITS: Final = 45
"""Durations are nanoseconds, capped at 2 ** 45 ns (about 9.8 hours): the last bucket."""
BUCKETS: Final = (MAX_BITS + 1) << SUB
"""Buckets in one histogram."""
MAX_COMMANDS: Final = 100
"""Command names kept apart at most; past them a name is counted under `OTHER`."""
OTHER: Final = "(other)"
"""Where the requests of names past `MAX_COMMANDS` are counted (a client cannot grow it)."""

_perf_ns = time.perf_counter_ns
_STATUS = b'"status":"'
# An encoded Response starts with its id (at most 128 characters, escaped at most 6 to 1),
# then its type and status: the status is always within this many bytes.
_STATUS_WITHIN: Final = 1024


def bucket_of(ns: int) -> int:
    """The histogram bucket of a duration in nanoseconds (HDR-style: octave, then quarter)."""
    if ns < 8:
        ns = 8
    bits = ns.bit_length()
    if bits > MAX_BITS:
        return BUCKETS - 1
    return (bits << SUB) | ((ns >> (bits - 1 - SUB)) & ((1 << SUB) - 1))


def bucket_upper(index: int) -> float:
    """The upper bound of a bucket, in seconds (what a quantile in it is reported as)."""
    bits, quarter = index >> SUB, index & ((1 << SUB) - 1)
    low = (1 << (bits - 1)) + (quarter << (bits - 1 - SUB)) if bits > SUB else 8
    width = 1 << max(0, bits - 1 - SUB)
    return (low + width) / 1e9


def quantile(histogram: list[int], total: int, q: float) -> float | None:
    """The `q` quantile (0..1) of a histogram holding `total` durations, in seconds.

    None when it holds none. The estimate is the upper bound of the bucket the quantile falls
    in: at most 19 % above the true value.
    """
    if total <= 0:
        return None
    rank = max(1, int(q * total + 0.999999))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_upper(index)
    return bucket_upper(len(histogram) - 1)


class CommandFigures:
    """What one command counted since the dashboard started (cumulative).

    Attributes:
        count: requests answered.
        errors: those answered with an error (or whose run raised).
        histogram: answered requests per latency bucket (`bucket_of`).
    """

    __slots__ = ("count", "errors", "histogram")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.histogram = [0] * BUCKETS


class CallRecorder:
    """Counts, errors and latencies per command, and events received (see the module).

    Attributes:
        commands: the figures of each command name seen.
        events: events received from peers (any transport).
    """

    def __init__(self) -> None:
        self.commands: dict[str, CommandFigures] = {}
        self.events = 0

    def figures(self, command: str) -> CommandFigures:
        """The figures of `command`, made at its first request (`OTHER` past the bound)."""
        found = self.commands.get(command)
        if found is None:
            if len(self.commands) >= MAX_COMMANDS:
                command = OTHER
                found = self.commands.get(command)
            if found is None:
                found = self.commands[command] = CommandFigures()
        return found

    def record(self, command: str, ns: int, error: bool) -> None:
        """Count one answered request of `command` that took `ns` nanoseconds."""
        figures = self.commands.get(command) or self.figures(command)
        figures.count += 1
        if error:
            figures.errors += 1
        figures.histogram[bucket_of(ns)] += 1

    def answer(
        self,
        dispatcher: Dispatcher,
        connection: Connection,
        request: Request,
        transport: Literal["websocket", "http"],
    ) -> bytes | Awaitable[bytes]:
        """`Dispatcher.answer`, timed: the frame at once, or an awaitable of it.

        Written out in full rather than through `record` and `bucket_of`: this runs for every
        request while the dashboard is on, and each call saved is about 0.1 µs.
        """
        started = _perf_ns()
        out = dispatcher.answer(connection, request, transport, True)
        if type(out) is not bytes:
            assert not isinstance(out, bytes)
            return self._later(out, request.command, started)
        ns = _perf_ns() - started
        figures = self.commands.get(request.command) or self.figures(request.command)
        figures.count += 1
        # An answer is '{"id":"<id>","type":"response","status":"ok"...' (or "error"): with an
        # id JSON did not escape, the status starts at a known place; else it is looked for.
        # ':"o' (58, 34, 111) cannot occur inside a JSON string, where a quote is escaped.
        at = 37 + len(request.id)
        if len(out) <= at or out[at] != 111 or out[at - 1] != 34 or out[at - 2] != 58:
            found = out.find(_STATUS, 0, _STATUS_WITHIN)
            if found < 0 or out[found + 10] != 111:
                figures.errors += 1
        if ns < 8:
            ns = 8
        bits = ns.bit_length()
        figures.histogram[
            BUCKETS - 1
            if bits > MAX_BITS
            else (bits << SUB) | ((ns >> (bits - 1 - SUB)) & ((1 << SUB) - 1))
        ] += 1
        return out

    async def _later(self, out: Awaitable[bytes], command: str, started: int) -> bytes:
        try:
            frame = await out
        except BaseException:
            self.record(command, _perf_ns() - started, True)
            raise
        at = frame.find(_STATUS, 0, _STATUS_WITHIN)
        self.record(command, _perf_ns() - started, at < 0 or frame[at + 10] != 111)
        return frame
