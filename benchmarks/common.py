"""What every benchmark process shares: the payload, the event loop, limits, stdio messages.

The harness is one orchestrator (`benchmarks.runner`) and worker processes (`benchmarks.servers`,
`benchmarks.clients`) that it talks to over their stdin/stdout: one JSON object per line in
each direction. Workers log to stderr only, so stdout stays a clean message channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
import traceback
from collections.abc import Coroutine
from typing import Any, Final, NoReturn, TypeVar

import orjson

__all__ = [
    "ADMIN_KEY",
    "HOST",
    "PAYLOAD",
    "StdinLines",
    "cpu_seconds",
    "emit",
    "have_module",
    "percentile",
    "pin_from_env",
    "raise_nofile_limit",
    "rss_bytes",
    "run",
    "run_worker",
]

T = TypeVar("T")

ADMIN_KEY: Final = "bench-dashboard-key"
"""The dashboard key of the ``siyi_admin`` row's server (its viewer logs in with it)."""

HOST: Final = "127.0.0.1"
"""Loopback only: no benchmark process ever binds or dials anything else."""

PAYLOAD: Final[dict[str, Any]] = {
    "player": "Steve",
    "world": "overworld",
    "position": [128.5, 64.0, -32.25],
    "message": "hello from a bench",
}
"""The echo payload every row sends (about 100 bytes of JSON, see `PAYLOAD_BYTES`)."""

PAYLOAD_BYTES: Final = len(orjson.dumps(PAYLOAD))


def have_module(name: str) -> bool:
    """True when `name` can be imported (an optional benchmark dependency)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool) -> T:
    """Run `main` on asyncio's default loop, or on uvloop when asked."""
    if use_uvloop:
        import uvloop

        result: T = uvloop.run(main)  # typed Any where uvloop is not installed
        return result
    return asyncio.run(main)


def run_worker(main: Coroutine[Any, Any, object], *, use_uvloop: bool) -> NoReturn:
    """Run a worker's `main`, then leave at once with its outcome as the exit code.

    The worker has already closed what it measured; exiting without the event loop's own
    teardown spares thousands of half-closed connections a slow, noisy cancellation.
    """

    async def guarded() -> int:
        try:
            await main
        except Exception:
            emit({"error": traceback.format_exc()})
            return 1
        return 0

    try:
        code = run(guarded(), use_uvloop=use_uvloop)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def pin_from_env() -> None:
    """Pin this process to the CPUs listed in ``BENCH_CPUS`` (e.g. ``"1"`` or ``"1,2,3"``).

    The orchestrator pins servers and clients to different cores so that they compete the
    same way in every row; without the variable (or without affinity support) nothing changes.
    """
    cpus = os.environ.get("BENCH_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(ValueError, OSError):
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used.

    `time.process_time` reads CLOCK_PROCESS_CPUTIME_ID: nanosecond resolution, where
    ``/proc/<pid>/stat`` counts 10 ms clock ticks.
    """
    return time.process_time()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (default: this process) in bytes."""
    path = f"/proc/{pid or 'self'}/statm"
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        pass
    import psutil  # not on Linux: fall back to psutil (in the bench extra)

    return int(psutil.Process(pid or os.getpid()).memory_info().rss)


def percentile(sorted_values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def emit(message: dict[str, Any]) -> None:
    """Send one message to the orchestrator (a JSON line on stdout)."""
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


class StdinLines:
    """Read the orchestrator's messages (JSON lines on stdin) without blocking the loop."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None

    async def _open(self) -> asyncio.StreamReader:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
            )
            self._reader = reader
        return self._reader

    async def next(self) -> dict[str, Any]:
        """The next message; ``{"cmd": "quit"}`` once the orchestrator has gone away."""
        reader = await self._open()
        line = await reader.readline()
        if not line:
            return {"cmd": "quit"}
        message: dict[str, Any] = orjson.loads(line)
        return message
