"""The orchestrator: start servers and clients as separate processes, measure, print the table.

Every server and every client is its own process (`benchmarks.servers`, `benchmarks.clients`)
on 127.0.0.1; this process only steers them over their stdin/stdout and does the arithmetic.
It never serves or sends a benchmark packet itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson

from .common import HOST, PAYLOAD_BYTES, have_module
from .rows import ROW_BY_NAME, ROWS, Row

__all__ = ["main"]

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_RESULTS: Final = Path(__file__).resolve().parent / "RESULTS-quick.md"
PHASES: Final = ("load", "stream", "broadcast", "idle", "big", "scaleout")
SCALE_ROWS: Final = {
    "siyi_client": ("siyi ProtocolServer + ProtocolClient", "RedisBackplane"),
    "socketio": ("python-socketio AsyncServer + AsyncClient", "AsyncRedisManager"),
}
"""The rows of the scale-out phase: the stacks with a Redis backplane (label, backplane)."""
STREAM_WINDOW: Final = 256
"""The larger window of the stream phase (the other variant takes the client's default)."""
STREAM_VARIANTS: Final[tuple[tuple[str, str, int | None], ...]] = (
    ("st_default", "stream", None),
    ("st_wide", "stream", STREAM_WINDOW),
    ("st_events", "events", None),
)
"""The stream phase's variants: (metric prefix, how the client takes the items, window)."""


@dataclass(frozen=True)
class Settings:
    """How much of everything one mode runs."""

    mode: str
    repeats: int
    warmup: int
    seq_requests: int
    par_requests: int
    concurrency: int
    broadcast_clients: int
    broadcast_procs: int
    broadcast_warmup: int
    broadcast_repeats: int
    idle_conns: int
    idle_repeats: int
    idle_heartbeat: float
    idle_hold: float
    big_conns: int | None
    """None: the idle runs stand in for the big-idle figure (with `idle_conns`)."""
    big_procs: int
    big_repeats: int
    big_heartbeat: float
    big_hold: float
    scale_nodes: int
    """Server processes sharing one redis-server in the scale-out broadcast."""
    scale_clients: int
    """Clients per node in the scale-out broadcast (one holder process per node)."""
    scale_warmup: int
    scale_repeats: int
    cross_warmup: int
    cross_requests: int
    cross_repeats: int
    stream_items: int
    """Small items per run of the stream phase, as one stream or as as many events."""
    stream_warmup: int
    stream_repeats: int


PRESETS: Final = {
    "full": Settings(
        mode="full",
        repeats=5,
        warmup=1000,
        seq_requests=5000,
        par_requests=40000,
        concurrency=64,
        broadcast_clients=500,
        broadcast_procs=2,
        broadcast_warmup=3,
        broadcast_repeats=9,
        idle_conns=1000,
        idle_repeats=3,
        idle_heartbeat=30.0,
        idle_hold=0.5,
        big_conns=10000,
        big_procs=2,
        big_repeats=3,
        big_heartbeat=5.0,
        big_hold=8.0,
        scale_nodes=3,
        scale_clients=500,
        scale_warmup=3,
        scale_repeats=9,
        cross_warmup=300,
        cross_requests=2000,
        cross_repeats=5,
        stream_items=100_000,
        stream_warmup=10_000,
        stream_repeats=5,
    ),
    "quick": Settings(
        mode="quick",
        repeats=3,
        warmup=200,
        seq_requests=600,
        par_requests=3000,
        concurrency=64,
        broadcast_clients=100,
        broadcast_procs=2,
        broadcast_warmup=2,
        broadcast_repeats=5,
        idle_conns=1000,
        idle_repeats=3,
        idle_heartbeat=1.0,
        idle_hold=1.6,
        big_conns=None,
        big_procs=1,
        big_repeats=0,
        big_heartbeat=1.0,
        big_hold=1.6,
        scale_nodes=3,
        scale_clients=500,
        scale_warmup=2,
        scale_repeats=5,
        cross_warmup=100,
        cross_requests=500,
        cross_repeats=3,
        stream_items=20_000,
        stream_warmup=2_000,
        stream_repeats=3,
    ),
    "smoke": Settings(
        mode="smoke",
        repeats=1,
        warmup=10,
        seq_requests=20,
        par_requests=128,
        concurrency=64,
        broadcast_clients=4,
        broadcast_procs=1,
        broadcast_warmup=1,
        broadcast_repeats=1,
        idle_conns=20,
        idle_repeats=1,
        idle_heartbeat=0.5,
        idle_hold=0.8,
        big_conns=None,
        big_procs=1,
        big_repeats=0,
        big_heartbeat=0.5,
        big_hold=0.8,
        scale_nodes=3,
        scale_clients=4,
        scale_warmup=1,
        scale_repeats=1,
        cross_warmup=5,
        cross_requests=20,
        cross_repeats=1,
        stream_items=300,
        stream_warmup=50,
        stream_repeats=1,
    ),
}


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Worker processes ----------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker process failed, died or did not answer in time."""


class Worker:
    """One child process speaking JSON lines on its stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.hello: dict[str, Any] = {}
        """A server's first message: its port, pid, loop."""
        self._stash: list[dict[str, Any]] = []

    @property
    def port(self) -> int:
        return int(self.hello["port"])

    @classmethod
    async def spawn(
        cls, name: str, module: str, args: Iterable[str], use_uvloop: bool, cpus: str | None
    ) -> Worker:
        # -P: no current directory on sys.path, so that a PYTHONPATH given by the caller (a
        # scratch copy of siyi_sdk) wins over the checkout's own siyi_sdk/.
        argv = [sys.executable, "-P", "-m", module, *args]
        if use_uvloop:
            argv.append("--uvloop")
        env = dict(os.environ)
        env.pop("BENCH_CPUS", None)
        if cpus:
            env["BENCH_CPUS"] = cpus
        # Ours last: a PYTHONPATH given by the caller (a scratch copy of siyi_sdk) wins.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
            limit=1 << 20,
        )
        return cls(name, proc)

    async def send(self, message: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(orjson.dumps(message) + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerError(f"{self.name}: cannot write to it ({exc})") from None

    async def recv(self, key: str, timeout: float) -> dict[str, Any]:
        """The next message holding `key` (others are kept for a later `recv`)."""
        for i, kept in enumerate(self._stash):
            if key in kept:
                return self._stash.pop(i)
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await stdout.readline()
                    if not line:
                        code = await self.proc.wait()
                        raise WorkerError(f"{self.name}: exited with code {code}")
                    message: dict[str, Any] = orjson.loads(line)
                    if "error" in message:
                        raise WorkerError(f"{self.name}: {message['error']}")
                    if key in message:
                        return message
                    self._stash.append(message)
        except TimeoutError:
            raise WorkerError(f"{self.name}: no {key!r} within {timeout:g} s") from None

    async def ask(self, message: dict[str, Any], key: str, timeout: float = 60.0) -> dict[str, Any]:
        await self.send(message)
        return await self.recv(key, timeout)

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask it to quit; kill it (this child, by its handle) if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(WorkerError):
                await self.send({"cmd": "quit"})
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                log(f"{self.name}: did not quit in {timeout:g} s, killing it")
                self.proc.kill()
                await self.proc.wait()


def cpu_split(pin: bool) -> tuple[str | None, str | None]:
    """CPUs for servers and for clients: the first core for servers, the others for clients."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), ",".join(str(c) for c in cpus[1:])


class Processes:
    """Every worker started in one phase, stopped together (clients first, then servers)."""

    def __init__(self, use_uvloop: bool, pin: bool) -> None:
        self.use_uvloop = use_uvloop
        self.server_cpus, self.client_cpus = cpu_split(pin)
        self.servers: list[Worker] = []
        self.clients: list[Worker] = []

    async def server(
        self, stack: str, heartbeat: float, extra: Iterable[str] = (), name: str | None = None
    ) -> Worker:
        worker = await Worker.spawn(
            name or f"{stack} server",
            "benchmarks.servers",
            ["--stack", stack, "--heartbeat", str(heartbeat), *extra],
            self.use_uvloop,
            self.server_cpus,
        )
        self.servers.append(worker)
        worker.hello = await worker.recv("port", 60)
        return worker

    async def client(self, name: str, args: list[str]) -> Worker:
        worker = await Worker.spawn(
            name, "benchmarks.clients", args, self.use_uvloop, self.client_cpus
        )
        self.clients.append(worker)
        worker.hello = await worker.recv("ready", 60)
        return worker

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.clients))
        await asyncio.gather(*(w.stop() for w in self.servers))
        self.clients.clear()
        self.servers.clear()


# Measurements --------------------------------------------------------------------------------


@dataclass
class Results:
    """Samples per row and metric for one event loop, plus what went wrong."""

    loop: str
    pin: bool
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, row: str, metric: str, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(metric, []).append(value)

    def get(self, row: str, metric: str) -> list[float]:
        return self.samples.get(row, {}).get(metric, [])

    def median(self, row: str, metric: str) -> float | None:
        values = self.get(row, metric)
        return statistics.median(values) if values else None


async def _stats(server: Worker) -> dict[str, Any]:
    return await server.ask({"cmd": "stats"}, "cpu", 30)


async def _wait_conns(server: Worker, expected: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await _stats(server)
        if stats["conns"] == expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


async def phase_load(s: Settings, rows: list[Row], results: Results) -> None:
    """Sequential and in-flight round trips, with the server's CPU time per request."""
    procs = Processes(results.loop == "uvloop", results.pin)
    try:
        servers: dict[str, Worker] = {}
        for stack in sorted({row.stack for row in rows}):
            servers[stack] = await procs.server(stack, 30.0)
            if "siyi_sdk" in servers[stack].hello:
                results.info["siyi_sdk"] = servers[stack].hello["siyi_sdk"]
        clients: dict[str, Worker] = {}
        for row in rows:
            port = servers[row.stack].port
            clients[row.name] = await procs.client(
                f"{row.name} client", ["load", "--row", row.name, "--port", str(port)]
            )
            for conc in (1, s.concurrency):
                await clients[row.name].ask(
                    {"cmd": "warm", "requests": s.warmup, "concurrency": conc}, "warmed", 300
                )
        log(f"load: {len(rows)} rows warmed up; {s.repeats} repeats")
        figures = (("seq", 1, s.seq_requests), ("par", s.concurrency, s.par_requests))
        for rep in range(s.repeats):
            for figure, conc, n in figures:
                # Rows interleaved within each repeat: a slow patch of the (shared, 2-core)
                # machine lands on every row rather than on one.
                for row in rows:
                    server = servers[row.stack]
                    before = await _stats(server)
                    answer = await clients[row.name].ask(
                        {"cmd": "go", "requests": n, "concurrency": conc}, "result", 900
                    )
                    after = await _stats(server)
                    result = answer["result"]
                    results.add(row.name, f"{figure}_rps", result["rps"])
                    results.add(row.name, f"{figure}_p50", result["p50"] * 1e6)
                    results.add(row.name, f"{figure}_p99", result["p99"] * 1e6)
                    results.add(row.name, f"{figure}_cpu", (after["cpu"] - before["cpu"]) / n * 1e6)
                    results.add(row.name, f"{figure}_client_cpu", result["cpu"] / n * 1e6)
            log(f"load: repeat {rep + 1}/{s.repeats} done")
    finally:
        await procs.stop()


async def phase_stream(s: Settings, results: Results) -> None:
    """Small items from one siyi server to one client: as a stream (two windows), as events.

    Each run is one client request: the client's clock runs from before it until the last
    item is consumed (a stream) or received by its event handler (events). The server's CPU
    time is read before and after each run, as in the load phase. The variants are
    interleaved within each repeat.
    """
    procs = Processes(results.loop == "uvloop", results.pin)
    row = "siyi_client"
    try:
        server = await procs.server("siyi", 30.0)
        results.info["siyi_sdk"] = server.hello.get("siyi_sdk", "siyi_sdk")
        client = await procs.client(
            "siyi stream client", ["stream", "--row", row, "--port", str(server.port)]
        )
        results.info["stream_window"] = int(client.hello["default_window"])
        for _, how, window in STREAM_VARIANTS:
            go = {"cmd": "go", "how": how, "items": s.stream_warmup, "window": window}
            await client.ask(go, "result", 300)
        log(f"stream: warmed up; {s.stream_repeats} repeats of {s.stream_items:,} items")
        for rep in range(s.stream_repeats):
            figures = []
            for key, how, window in STREAM_VARIANTS:
                before = await _stats(server)
                answer = await client.ask(
                    {"cmd": "go", "how": how, "items": s.stream_items, "window": window},
                    "result",
                    900,
                )
                after = await _stats(server)
                result = answer["result"]
                n = s.stream_items
                results.add(row, f"{key}_ips", result["ips"])
                results.add(row, f"{key}_cpu", (after["cpu"] - before["cpu"]) / n * 1e6)
                results.add(row, f"{key}_client_cpu", result["cpu"] / n * 1e6)
                what = how if how == "events" else f"window {window or 'default'}"
                figures.append(f"{what}: {result['ips']:,.0f} items/s")
            log(f"stream: repeat {rep + 1}/{s.stream_repeats} done ({', '.join(figures)})")
    finally:
        await procs.stop()


async def _hold_clients(procs: Processes, row: Row, port: int, total: int, n: int) -> list[Worker]:
    n = max(1, min(n, total))
    counts = [total // n + (1 if i < total % n else 0) for i in range(n)]
    return list(
        await asyncio.gather(
            *(
                procs.client(
                    f"{row.name} holder {i + 1}/{n}",
                    ["hold", "--row", row.name, "--port", str(port), "--count", str(count)],
                )
                for i, count in enumerate(counts)
            )
        )
    )


async def _connect(holders: list[Worker], timeout: float) -> tuple[int, int, float]:
    """Every holder opens its connections at once: (connected, failed, wall seconds)."""
    answers = await asyncio.gather(
        *(h.ask({"cmd": "connect"}, "connected", timeout) for h in holders)
    )
    connected = sum(int(a["connected"]) for a in answers)
    failed = sum(int(a["failed"]) for a in answers)
    elapsed = max(a["end"] for a in answers) - min(a["start"] for a in answers)
    return connected, failed, float(elapsed)


Broadcast = tuple[dict[str, Any], list[dict[str, Any]]]
"""One broadcast: the server's ``{"t0", "t1"}`` and every holder's receipt report, in order."""


async def _broadcasts(
    server: Worker, holders: list[Worker], warmup: int, repeats: int
) -> list[Broadcast]:
    """`warmup` + `repeats` broadcasts from `server`, one at a time; the last `repeats`."""
    measured: list[Broadcast] = []
    for seq in range(warmup + repeats):
        sent = await server.ask({"cmd": "broadcast", "seq": seq}, "t0", 60)
        reports: list[dict[str, Any]] = []
        for holder in holders:
            while True:  # skip reports of earlier broadcasts, if any came late
                report = await holder.recv("seq", 30)
                if report["seq"] == seq:
                    break
            reports.append(report)
        if seq >= warmup:
            measured.append((sent, reports))
        await asyncio.sleep(0.05)
    return measured


async def phase_broadcast(s: Settings, row: Row, results: Results) -> None:
    """One event to `broadcast_clients` clients: from the server's call to the last receipt.

    The server notes `time.monotonic()` just before its broadcast call; every client process
    notes `time.monotonic()` when each of its connections receives the event and reports the
    latest. CLOCK_MONOTONIC is one system-wide clock on Linux, so the difference is valid
    across processes.
    """
    procs = Processes(results.loop == "uvloop", results.pin)
    try:
        server = await procs.server(row.stack, 30.0)
        n = s.broadcast_clients
        holders = await _hold_clients(procs, row, server.port, n, s.broadcast_procs)
        connected, failed, _ = await _connect(holders, 300)
        if connected != n:
            raise WorkerError(f"only {connected} of {n} clients connected ({failed} failed)")
        stats = await _wait_conns(server, n, 30)
        if stats["conns"] != n:
            raise WorkerError(f"the server counts {stats['conns']} connections, not {n}")
        for sent, reports in await _broadcasts(
            server, holders, s.broadcast_warmup, s.broadcast_repeats
        ):
            last = max(r["last"] for r in reports)
            results.add(row.name, "bcast_ms", (last - sent["t0"]) * 1e3)
            results.add(row.name, "bcast_call_ms", (sent["t1"] - sent["t0"]) * 1e3)
        log(f"broadcast: {row.name} done ({s.broadcast_repeats} x {n} clients)")
    finally:
        await procs.stop()


async def idle_run(
    row: Row, results: Results, conns: int, nprocs: int, heartbeat: float, hold: float, key: str
) -> None:
    """Open `conns` idle connections to a fresh server: RSS growth, connect time, drops."""
    procs = Processes(results.loop == "uvloop", results.pin)
    try:
        server = await procs.server(row.stack, heartbeat)
        holders = await _hold_clients(procs, row, server.port, conns, nprocs)
        # Open and close a few first, so that one-time costs (lazy imports, caches, the first
        # arena) are not counted as per-connection memory.
        await asyncio.gather(*(h.ask({"cmd": "warm", "count": 10}, "warmed", 60) for h in holders))
        await _wait_conns(server, 0, 10)
        await server.ask({"cmd": "gc"}, "gc")
        base = await _stats(server)
        connected, failed, elapsed = await _connect(holders, 900)
        await _wait_conns(server, connected, 60)
        await server.ask({"cmd": "gc"}, "gc")
        loaded = await _stats(server)
        results.add(row.name, f"{key}_rss_per_conn", (loaded["rss"] - base["rss"]) / conns / 1024)
        results.add(row.name, f"{key}_rss_mib", loaded["rss"] / 2**20)
        results.add(row.name, f"{key}_connect_s", elapsed)
        # Hold past 1.5 heartbeat intervals: a connection that fails its pings is gone by then.
        await asyncio.sleep(hold)
        stats = await _stats(server)
        checks = await asyncio.gather(*(h.ask({"cmd": "check"}, "open", 60) for h in holders))
        still_open = min(int(stats["conns"]), sum(int(c["open"]) for c in checks))
        results.add(row.name, f"{key}_dropped", conns - still_open)
        if failed:
            results.errors.append(f"{row.name}: {failed} of {conns} connections failed to open")
    finally:
        await procs.stop()


class RedisServer:
    """One redis-server of our own on a free loopback port, for the scale-out phase's nodes."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self._runs = 0

    @classmethod
    async def start(cls, binary: str, cpus: str | None) -> RedisServer:
        """Start it (pinned with the servers), and wait until it answers PING."""
        for _ in range(3):
            with socket.socket() as probe:  # a free port; another process may take it first
                probe.bind((HOST, 0))
                port = int(probe.getsockname()[1])
            argv = [binary, "--port", str(port), "--bind", HOST]
            argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if cpus and hasattr(os, "sched_setaffinity"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, {int(c) for c in cpus.split(",")})
            redis = cls(proc, port)
            deadline = time.monotonic() + 10
            while proc.returncode is None and time.monotonic() < deadline:
                try:
                    await redis._ping()
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                return redis
            await redis.stop()
        raise WorkerError(f"{binary} did not start")

    async def _ping(self) -> None:
        from redis.asyncio import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        client = Redis.from_url(self.url)
        try:
            await client.ping()
        except RedisConnectionError as exc:
            raise OSError(str(exc)) from None
        finally:
            await client.aclose()

    def node(self) -> tuple[str, list[str]]:
        """A fresh prefix (keeps this run apart from the earlier ones), and a node's arguments."""
        self._runs += 1
        prefix = f"bench{os.getpid()}-{self._runs}"
        return prefix, ["--redis", self.url, "--prefix", prefix]

    async def wait_subscribed(self, channel: str, count: int, timeout: float = 10.0) -> int:
        """Wait until `count` clients subscribe to `channel`; how many did."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                numsub = await client.pubsub_numsub(channel)
                subscribed = int(numsub[0][1]) if numsub else 0
                if subscribed >= count or time.monotonic() > deadline:
                    return subscribed
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Terminate it (this child, by its handle); kill it if it lingers."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def scale_broadcast(
    s: Settings, row: Row, results: Results, redis: RedisServer | None, nodes: int, key: str
) -> None:
    """`nodes` servers (sharing `redis`), `scale_clients` clients on each, broadcasts from node 1.

    Samples: ``{key}_ms`` from the call on node 1 to the last receipt on any node,
    ``{key}_call_ms`` the call itself and, with several nodes, ``{key}_remote_ms`` from the
    call to the first receipt on another node (the backplane's hop).
    """
    procs = Processes(results.loop == "uvloop", results.pin)
    try:
        prefix, extra = redis.node() if redis else ("", [])
        servers = list(
            await asyncio.gather(
                *(
                    procs.server(row.stack, 30.0, extra, f"{row.stack} node {i + 1}/{nodes}")
                    for i in range(nodes)
                )
            )
        )
        n = s.scale_clients
        groups = await asyncio.gather(
            *(_hold_clients(procs, row, server.port, n, 1) for server in servers)
        )
        holders = [holder for group in groups for holder in group]
        connected, failed, _ = await _connect(holders, 300)
        if connected != n * nodes:
            raise WorkerError(
                f"only {connected} of {n * nodes} clients connected ({failed} failed)"
            )
        for i, server in enumerate(servers):
            stats = await _wait_conns(server, n, 30)
            if stats["conns"] != n:
                raise WorkerError(f"node {i + 1} counts {stats['conns']} connections, not {n}")
        if redis and row.stack == "socketio":
            # Its nodes subscribe in the background once their first client has connected.
            subscribed = await redis.wait_subscribed(prefix, nodes)
            if subscribed < nodes:
                raise WorkerError(f"only {subscribed} of {nodes} nodes subscribed to {prefix}")
        local = len(groups[0])
        for sent, reports in await _broadcasts(
            servers[0], holders, s.scale_warmup, s.scale_repeats
        ):
            last = max(r["last"] for r in reports)
            results.add(row.name, f"{key}_ms", (last - sent["t0"]) * 1e3)
            results.add(row.name, f"{key}_call_ms", (sent["t1"] - sent["t0"]) * 1e3)
            if nodes > 1:
                first = min(r["first"] for r in reports[local:])
                results.add(row.name, f"{key}_remote_ms", (first - sent["t0"]) * 1e3)
        where = f"{nodes} node(s), {'Redis' if redis else 'in memory'}"
        log(f"scaleout: {row.name} broadcast done ({where}, {s.scale_repeats} x {n * nodes})")
    finally:
        await procs.stop()


async def cross_latency(s: Settings, row: Row, results: Results, redis: RedisServer) -> None:
    """Requests sent by node B to a client on node B (same node) and on node A (cross node).

    Node B times each ``send_request`` (python-socketio: ``call``) itself; the two figures are
    interleaved, in alternating order, within each repeat.
    """
    procs = Processes(results.loop == "uvloop", results.pin)
    try:
        _, extra = redis.node()
        node_a, node_b = await asyncio.gather(
            procs.server(row.stack, 30.0, extra, f"{row.stack} node A"),
            procs.server(row.stack, 30.0, extra, f"{row.stack} node B"),
        )
        on_a, on_b = await asyncio.gather(
            procs.client(
                f"{row.name} on node A", ["answer", "--row", row.name, "--port", str(node_a.port)]
            ),
            procs.client(
                f"{row.name} on node B", ["answer", "--row", row.name, "--port", str(node_b.port)]
            ),
        )
        await asyncio.gather(_wait_conns(node_a, 1, 30), _wait_conns(node_b, 1, 30))
        pairs = [("same", on_b), ("cross", on_a)]
        for rep in range(s.cross_repeats):
            for figure, client in pairs if rep % 2 == 0 else pairs[::-1]:
                answer = await node_b.ask(
                    {
                        "cmd": "call",
                        "key": client.hello["key"],
                        "warmup": s.cross_warmup if rep == 0 else 0,
                        "requests": s.cross_requests,
                    },
                    "called",
                    600,
                )
                results.add(row.name, f"so_{figure}_p50", answer["p50"] * 1e6)
                results.add(row.name, f"so_{figure}_p99", answer["p99"] * 1e6)
                results.add(row.name, f"so_{figure}_rps", answer["rps"])
        log(f"scaleout: {row.name} requests done ({s.cross_repeats} x {s.cross_requests})")
    finally:
        await procs.stop()


Guard = Callable[[str, Awaitable[None]], Awaitable[None]]
"""Runs one part of a phase; a WorkerError is recorded in the results, not raised."""


async def phase_scaleout(
    s: Settings, rows: list[Row], results: Results, binary: str, guarded: Guard
) -> None:
    """Broadcast over 1 and `scale_nodes` nodes sharing one redis-server; cross-node requests."""
    redis = await RedisServer.start(binary, cpu_split(results.pin)[0])
    try:
        for row in rows:
            await guarded(
                f"scaleout {row.name} in memory",
                scale_broadcast(s, row, results, None, 1, "so_mem1"),
            )
            await guarded(
                f"scaleout {row.name} 1 node", scale_broadcast(s, row, results, redis, 1, "so_one")
            )
            await guarded(
                f"scaleout {row.name} {s.scale_nodes} nodes",
                scale_broadcast(s, row, results, redis, s.scale_nodes, "so_all"),
            )
        for row in rows:
            await guarded(f"scaleout {row.name} requests", cross_latency(s, row, results, redis))
    finally:
        await redis.stop()


async def run_loop(
    s: Settings, rows: list[Row], phases: set[str], loop: str, pin: bool, redis: str | None
) -> Results:
    """Every phase asked for, on one event loop (asyncio or uvloop)."""
    results = Results(loop, pin)
    holding = [row for row in rows if row.holds]

    async def guarded(what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except WorkerError as exc:
            results.errors.append(f"{what}: {exc}")
            log(f"FAILED {what}: {exc}")

    if "load" in phases and rows:
        await guarded("load", phase_load(s, rows, results))
    if "stream" in phases and any(row.name == "siyi_client" for row in rows):
        await guarded("stream", phase_stream(s, results))
    if "broadcast" in phases:
        for row in holding:
            await guarded(f"broadcast {row.name}", phase_broadcast(s, row, results))
    if "idle" in phases:
        for rep in range(s.idle_repeats):
            # Repeats interleaved across rows, each on a fresh server process.
            for row in holding:
                await guarded(
                    f"idle {row.name}",
                    idle_run(row, results, s.idle_conns, 1, s.idle_heartbeat, s.idle_hold, "idle"),
                )
            log(f"idle: repeat {rep + 1}/{s.idle_repeats} done ({s.idle_conns} connections)")
    if "big" in phases and s.big_conns:
        for rep in range(s.big_repeats):
            for row in holding:
                await guarded(
                    f"big idle {row.name}",
                    idle_run(
                        row, results, s.big_conns, s.big_procs, s.big_heartbeat, s.big_hold, "big"
                    ),
                )
            log(f"big idle: repeat {rep + 1}/{s.big_repeats} done ({s.big_conns} connections)")
    scaling = [row for row in rows if row.name in SCALE_ROWS]
    if "scaleout" in phases and scaling and redis:
        await guarded("scaleout", phase_scaleout(s, scaling, results, redis, guarded))
    return results


# Report --------------------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def cell(values: list[float], digits: int = 0) -> str:
    """``median (min–max)`` of the samples, ``—`` when there are none."""
    if not values:
        return "—"
    median = _num(statistics.median(values), digits)
    if len(values) == 1:
        return median
    return f"{median} ({_num(min(values), digits)}–{_num(max(values), digits)})"


def _digits_us(values: list[float]) -> int:
    return 1 if values and statistics.median(values) < 100 else 0


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


@dataclass(frozen=True)
class Target:
    """One goal of the issue: a ratio of two rows' medians against a bound."""

    what: str
    metric: str
    row: str
    baseline: str
    bound: float
    higher_is_better: bool
    digits: int = 0


_WS_RPS = "64 in flight over WebSocket, req/s"

TARGETS: Final = (
    Target(_WS_RPS, "par_rps", "siyi_client", "raw_ws", 0.8, True),
    Target(_WS_RPS, "par_rps", "siyi_client", "socketio", 6.0, True),
    Target("sequential p50 latency, µs", "seq_p50", "siyi_client", "raw_ws", 1.2, False, 1),
    Target(
        "server CPU per request (64 in flight), µs",
        "par_cpu",
        "siyi_client",
        "raw_ws",
        1.3,
        False,
        1,
    ),
    Target(_WS_RPS + " (the server alone)", "par_rps", "siyi_server", "raw_ws", 0.75, True),
    # The dashboard issue: on, with one viewer, within 5 % of off (the same run).
    Target(_WS_RPS + ", dashboard on", "par_rps", "siyi_admin", "siyi_client", 0.95, True),
    Target(
        "server CPU per request (64 in flight), dashboard on, µs",
        "par_cpu",
        "siyi_admin",
        "siyi_client",
        1.05,
        False,
        1,
    ),
    Target(
        "server CPU per request (64 in flight, the server alone), µs",
        "par_cpu",
        "siyi_server",
        "raw_ws",
        1.3,
        False,
        1,
    ),
    Target(
        "HTTP /general, 64 in flight, req/s", "par_rps", "siyi_api_http", "raw_http", 0.85, True
    ),
    Target("broadcast to all clients, ms", "bcast_ms", "siyi_client", "raw_ws", 1.2, False, 2),
    Target(
        "server RSS per idle connection, KiB",
        "idle_rss_per_conn",
        "siyi_client",
        "raw_ws",
        1.3,
        False,
        1,
    ),
)


def target_lines(results: Results) -> tuple[list[str], list[bool]]:
    body: list[list[str]] = []
    verdicts: list[bool] = []
    for t in TARGETS:
        mine, base = results.median(t.row, t.metric), results.median(t.baseline, t.metric)
        goal = f"{'≥' if t.higher_is_better else '≤'} {t.bound:g}×"
        if mine is None or base is None or base == 0:
            body.append([t.what, f"{t.row} / {t.baseline}", "—", "—", "—", goal, "not measured"])
            continue
        ratio = mine / base
        ok = ratio >= t.bound if t.higher_is_better else ratio <= t.bound
        verdicts.append(ok)
        body.append(
            [
                t.what,
                f"{t.row} / {t.baseline}",
                _num(mine, t.digits),
                _num(base, t.digits),
                f"{ratio:.2f}×",
                goal,
                "PASS" if ok else "**MISS**",
            ]
        )
    header = ["target", "rows", "siyi", "baseline", "ratio", "goal", "result"]
    return _table(header, body), verdicts


def _problem(error: str) -> str:
    """One line for a problem: a worker's traceback is summed up by its last line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    first = lines[0] if lines else error
    if len(lines) > 1 and first.endswith("Traceback (most recent call last):"):
        first = f"{first.removesuffix('Traceback (most recent call last):')}{lines[-1]}"
    return first[:300]


def _ratio(mine: float | None, base: float | None, digits: int = 2) -> str:
    return "—" if mine is None or base is None or base == 0 else f"{mine / base:.{digits}f}×"


def scaleout_lines(s: Settings, rows: list[Row], results: Results) -> list[str]:
    """The scale-out tables: broadcast over Redis, and requests across nodes."""
    rows = [row for row in rows if row.name in SCALE_ROWS]
    n, k = s.scale_clients, s.scale_nodes
    lines = [
        f"Scale-out over one redis-server: broadcast to {n:,} clients per node (one client "
        f"process per node), from node 1, {s.scale_repeats} broadcasts after "
        f"{s.scale_warmup} warm-up; every node and redis-server share the servers' core(s). "
        f"Server-initiated `echo` requests, one at a time, {s.cross_requests:,} per repeat, "
        f"{s.cross_repeats} repeats, timed in node B: to a client on node B (same node) and "
        "to one on node A (cross node).",
        "",
    ]
    m = results.median
    names = {row.name for row in rows}
    both = {"siyi_client", "socketio"} <= names
    header = [
        "row",
        "nodes × clients",
        "broadcast: until last receipt, ms",
        "until first receipt on another node, ms",
        "server call, ms",
        "last receipt vs 1 node with Redis",
        "last receipt, siyi / python-socketio",
    ]
    body = []
    for row in rows:
        label, backplane = SCALE_ROWS[row.name]
        configs = (
            ("so_mem1", f"1 × {n:,}, in memory (no Redis)"),
            ("so_one", f"1 × {n:,}, {backplane}"),
            ("so_all", f"{k} × {n:,} = {k * n:,}, {backplane}"),
        )
        for key, what in configs:
            versus = "—"
            if both and row.name == "siyi_client":
                versus = _ratio(m(row.name, f"{key}_ms"), m("socketio", f"{key}_ms"))
            body.append(
                [
                    label,
                    what,
                    cell(results.get(row.name, f"{key}_ms"), 2),
                    cell(results.get(row.name, f"{key}_remote_ms"), 2),
                    cell(results.get(row.name, f"{key}_call_ms"), 2),
                    _ratio(m(row.name, f"{key}_ms"), m(row.name, "so_one_ms"))
                    if key == "so_all"
                    else "—",
                    versus,
                ]
            )
    lines += _table(header, body)
    header = [
        "row",
        "same node: p50 µs",
        "same node: p99 µs",
        "cross node: p50 µs",
        "cross node: p99 µs",
        "cross node: req/s",
        "cross / same (p50)",
    ]
    metrics: tuple[str, ...] = ("so_same_p50", "so_same_p99", "so_cross_p50", "so_cross_p99")
    body = []
    for row in rows:
        g = results.get
        body.append(
            [
                f"{SCALE_ROWS[row.name][0]} + {SCALE_ROWS[row.name][1]}",
                *(cell(g(row.name, metric), _digits_us(g(row.name, metric))) for metric in metrics),
                cell(g(row.name, "so_cross_rps")),
                _ratio(m(row.name, "so_cross_p50"), m(row.name, "so_same_p50")),
            ]
        )
    if both:
        metrics += ("so_cross_rps",)
        versus = "siyi / python-socketio (ratio of medians)"
        body.append(
            [versus, *(_ratio(m("siyi_client", x), m("socketio", x)) for x in metrics), "—"]
        )
    return [*lines, "", *_table(header, body)]


def stream_lines(s: Settings, results: Results) -> list[str]:
    """The stream table: a row per variant, items/s and CPU per item."""
    default = results.info.get("stream_window", "default")
    lines = [
        f'Streams: {s.stream_items:,} small items (`{{"n": i}}`) from a siyi ProtocolServer '
        "to a ProtocolClient (each in its own process) in one request: as one stream "
        "(`client.stream` of an `async def` generator command, acknowledged every half "
        "window) and as as many events (the command's handler calls `connection.send_event` "
        f"in a loop; the client's `on_event` handler takes them). {s.stream_repeats} repeats "
        f"after a warm-up of {s.stream_warmup:,} items per variant, variants interleaved; "
        "from the request until the last item is consumed (received, for events).",
        "",
    ]
    header = [
        "variant",
        "items/s",
        "server CPU µs/item",
        "client CPU µs/item",
        "items/s vs events",
    ]
    labels = {
        "st_default": f"stream, window {default} (the default)",
        "st_wide": f"stream, window {STREAM_WINDOW}",
        "st_events": "events",
    }
    row = "siyi_client"
    g, m = results.get, results.median
    body = [
        [
            labels[key],
            cell(g(row, f"{key}_ips")),
            cell(g(row, f"{key}_cpu"), _digits_us(g(row, f"{key}_cpu"))),
            cell(g(row, f"{key}_client_cpu"), _digits_us(g(row, f"{key}_client_cpu"))),
            _ratio(m(row, f"{key}_ips"), m(row, "st_events_ips")) if key != "st_events" else "—",
        ]
        for key, _, _ in STREAM_VARIANTS
    ]
    return [*lines, *_table(header, body)]


def report(s: Settings, rows: list[Row], results: Results, phases: set[str]) -> list[str]:
    lines = [f"### Event loop: {results.loop}", ""]
    lines.append(
        f"Request/response: {s.seq_requests:,} sequential and {s.par_requests:,} with "
        f"{s.concurrency} in flight per repeat, {s.repeats} repeats; each cell is the median "
        "of the repeats (min–max)."
    )
    lines.append("")
    header = [
        "row",
        "seq p50 µs",
        "seq p99 µs",
        "seq req/s",
        f"{s.concurrency} in flight req/s",
        f"server CPU µs/req ({s.concurrency} in flight)",
        "server CPU µs/req (seq)",
        f"client CPU µs/req ({s.concurrency} in flight)",
    ]
    body = []
    for row in rows:
        g = results.get
        body.append(
            [
                row.label,
                cell(g(row.name, "seq_p50"), _digits_us(g(row.name, "seq_p50"))),
                cell(g(row.name, "seq_p99"), _digits_us(g(row.name, "seq_p99"))),
                cell(g(row.name, "seq_rps")),
                cell(g(row.name, "par_rps")),
                cell(g(row.name, "par_cpu"), 1),
                cell(g(row.name, "seq_cpu"), 1),
                cell(g(row.name, "par_client_cpu"), 1),
            ]
        )
    lines += _table(header, body)
    if "stream" in phases:
        lines += ["", *stream_lines(s, results)]
    big_n = s.big_conns or s.idle_conns
    big = "big" if s.big_conns else "idle"
    hb = s.big_heartbeat if s.big_conns else s.idle_heartbeat
    hold = s.big_hold if s.big_conns else s.idle_hold
    lines += [
        "",
        f"Connections: broadcast to {s.broadcast_clients:,} clients in {s.broadcast_procs} "
        f"client process(es), {s.broadcast_repeats} broadcasts; RSS per idle connection with "
        f"{s.idle_conns:,} connections, {s.idle_repeats} fresh servers; {big_n:,} idle "
        f"connections with a {hb:g} s heartbeat held {hold:g} s, "
        f"{s.big_repeats if s.big_conns else s.idle_repeats} fresh servers.",
        "",
    ]
    header = [
        "row",
        f"broadcast to {s.broadcast_clients:,}: until last receipt, ms",
        "broadcast: server call, ms",
        f"server RSS per idle conn, KiB ({s.idle_conns:,})",
        f"{big_n:,} idle: connect all, s",
        f"{big_n:,} idle: server RSS, MiB",
        f"{big_n:,} idle: dropped",
    ]
    body = []
    for row in rows:
        g = results.get
        body.append(
            [
                row.label,
                cell(g(row.name, "bcast_ms"), 2),
                cell(g(row.name, "bcast_call_ms"), 2),
                cell(g(row.name, "idle_rss_per_conn"), 1),
                cell(g(row.name, f"{big}_connect_s"), 2),
                cell(g(row.name, f"{big}_rss_mib"), 1),
                cell(g(row.name, f"{big}_dropped")),
            ]
        )
    lines += _table(header, body)
    if "scaleout" in phases:
        lines += ["", *scaleout_lines(s, rows, results)]
    targets, _ = target_lines(results)
    lines += ["", f"Targets ({results.loop}; ratios of medians from this run):", "", *targets]
    if results.errors:
        lines += ["", "Problems in this run:", ""]
        lines += [f"- {_problem(e)}" for e in results.errors]
    return lines


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "siyi_sdk"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes in siyi_sdk/' if dirty else ''}" if head else "unknown"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def header_lines(s: Settings, argv: list[str], loops: list[str], info: dict[str, Any]) -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lines = [
        "# siyi-sdk benchmarks",
        "",
        f"Generated by `python -m benchmarks {shlex.join(argv)}`".rstrip() + f" ({s.mode} mode) "
        f"on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"open files: soft {soft}, hard {hard} (every worker raises its soft limit to the hard).",
        f"- Python {platform.python_version()}; aiohttp {_version('aiohttp')}, "
        f"pydantic {_version('pydantic')}, orjson {_version('orjson')}, "
        f"python-socketio {_version('python-socketio')}, uvloop {_version('uvloop')}; "
        f"event loops: {', '.join(loops)}.",
        f"- siyi-sdk {_version('siyi-sdk')} at git {info.get('git', 'unknown')} (when the run "
        f"started); measured copy: "
        f"`{info.get('siyi_sdk', 'siyi_sdk')}`.",
        f"- Payload: the same {PAYLOAD_BYTES}-byte JSON object echoed by every row "
        "(and carried by every broadcast).",
    ]
    if s.big_conns:
        needed = s.big_conns + 64
        verdict = "enough" if hard == resource.RLIM_INFINITY or hard >= needed else "NOT enough"
        lines.append(
            f"- {s.big_conns:,} connections need as many file descriptors in the server process "
            f"(and in the client processes, {s.big_procs} of them): the hard limit here is "
            f"{hard}, {verdict}."
        )
    return lines


METHOD: Final = """\
## How it is measured

- Every server and every client is its own process, on 127.0.0.1 only. The orchestrator
  (`python -m benchmarks`) only steers them over stdin/stdout; it sends no benchmark traffic.
  The machine's cores are shared by the server and its client(s), the same way for every row.
- Request/response rows: one client process per row, one connection (the HTTP rows: one
  `aiohttp.ClientSession`, whose pool opens as many keep-alive connections as requests in
  flight). *Sequential*: one request at a time. *In flight*: that many workers each send
  requests back to back. Latency is each request's round trip (`perf_counter`), p50/p99 over
  the run; req/s is requests / wall time. Each client warms up first; rows are interleaved
  within each repeat.
- Server CPU per request: the server process reports its own CPU time
  (`time.process_time()`, i.e. CLOCK_PROCESS_CPUTIME_ID: user + system, every thread, with
  nanosecond resolution where `/proc/<pid>/stat` counts 10 ms ticks) just before and just
  after each fixed run; the difference divided by the run's requests.
- Streams (phase `stream`, siyi only): one server process, one client process, one
  connection. A stream is `client.stream("items", {"count": n}, window=w)` consumed to the
  end, with the client's default window and with a larger one; events are one request to a
  command whose handler sends the same `n` items with `connection.send_event` one after
  another (no flow control but the outbox's), taken by a plain `on_event` handler. The client
  checks the order and count of the items and times (`perf_counter`) from before the request
  until the last item reaches its loop or handler; items/s is n / that time. Server CPU per
  item: the server's CPU time before and after each run (as above), divided by n; client CPU
  per item likewise in the client.
- Broadcast: N clients of the row's own client library, split over a few client processes,
  all connected before the first broadcast. The server takes `time.monotonic()` just before
  its broadcast call (raw aiohttp: a loop of `send_frame` over its sockets with the frame
  encoded once; python-socketio: `AsyncServer.emit`; siyi: `ProtocolServer.broadcast_event`).
  Each client records `time.monotonic()` when its handler gets the event; each client process
  reports its latest receipt. The figure is the latest receipt minus the server's timestamp.
  `time.monotonic()` is CLOCK_MONOTONIC, one system-wide clock on Linux, so timestamps taken
  in different processes on one machine are comparable. "server call" is how long the
  broadcast call itself took in the server.
- Memory per idle connection: a fresh server; 10 connections opened and closed first (one-time
  costs); `gc.collect()`; RSS; N connections opened and left idle; `gc.collect()`; RSS again.
  (RSS with N − RSS with 0) / N.
- Many idle connections: as above with the big N, heartbeat on (WebSocket pings from the
  server; python-socketio: its engine.io ping), opened 50 at a time per client process; the
  connect time is from the first connect to the last handshake done; after holding them longer
  than 1.5 heartbeat intervals, "dropped" = N − min(connections the server still counts,
  connections the clients still have open).
- Scale-out (phase `scaleout`; needs `redis-server` on PATH and the `redis` package): the
  orchestrator starts its own redis-server on a free loopback port (no persistence), pinned
  with the servers, and gives every run a fresh prefix (siyi: `RedisBackplane(url,
  prefix=...)`; python-socketio: `AsyncRedisManager(url, channel=...)`). Broadcast as above,
  with one client process of the row's client library per node and the call made on node 1:
  one node without Redis (the in-memory reference), one node with Redis, then several nodes
  on one Redis; "last receipt" is the latest receipt on any node, "first receipt on another
  node" the earliest receipt on a node other than the caller's (the backplane's hop). On a
  machine with few cores the nodes share the servers' core(s): the several-node figure is
  then the backplane's cost plus the nodes' fan-outs one after the other, not a speed-up.
- Requests across nodes: two nodes, A and B, on one Redis; one client on each answers the
  server's `echo` requests. Node B sends them one at a time and times each itself
  (`perf_counter` around `await server.send_request(conn, "echo", payload)`, where `conn`
  is `await server.find_session(key)`, found once before the timing; python-socketio:
  `await sio.call("echo", payload, to=sid)`): to its own client (same node) and to node A's
  (cross node, through Redis both ways). The two are interleaved within each repeat, in
  alternating order; p50/p99 per repeat.
- Rows that do not apply to a figure show "—". Targets are ratios of medians from one run.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="siyi-sdk against raw aiohttp and python-socketio, each server and client "
        "in its own process on 127.0.0.1.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    size.add_argument("--smoke", action="store_true", help="the smallest run (CI): a few seconds")
    parser.add_argument(
        "--uvloop", action="store_true", help="also run everything on uvloop (a second table)"
    )
    parser.add_argument(
        "--only-uvloop", action="store_true", help="run on uvloop only (no asyncio pass)"
    )
    parser.add_argument(
        "--rows", help=f"comma-separated subset of: {', '.join(r.name for r in ROWS)}"
    )
    parser.add_argument("--phases", help=f"comma-separated subset of: {', '.join(PHASES)}")
    parser.add_argument(
        "--output",
        help="the Markdown file to write (default: benchmarks/RESULTS.md for a full run, "
        "benchmarks/RESULTS-quick.md for --quick, none for --smoke); '-' writes none",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin servers to the first core and clients to the others",
    )
    parser.add_argument("--repeats", type=int, help="override the repeats of the load figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    s = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    rows = list(ROWS)
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in ROW_BY_NAME]
        if unknown:
            print(f"unknown rows: {', '.join(unknown)}", file=sys.stderr)
            return 2
        rows = [row for row in ROWS if row.name in wanted]
    phases = set(PHASES)
    if args.phases:
        phases = {p.strip() for p in args.phases.split(",") if p.strip()}
        if phases - set(PHASES):
            print(f"unknown phases: {', '.join(sorted(phases - set(PHASES)))}", file=sys.stderr)
            return 2
    skipped = [row for row in rows if row.needs and not have_module(row.needs)]
    rows = [row for row in rows if row not in skipped]
    redis = shutil.which("redis-server")
    redis_missing = None
    if "scaleout" in phases:
        if redis is None:
            redis_missing = "no `redis-server` on PATH"
        elif not have_module("redis"):
            redis_missing = "the `redis` package is not installed"
    loops = ["asyncio"]
    if args.uvloop or args.only_uvloop:
        if not have_module("uvloop"):
            print("uvloop is not installed (pip install -e '.[bench]')", file=sys.stderr)
            return 2
        loops = ["uvloop"] if args.only_uvloop else ["asyncio", "uvloop"]

    revision = _git_revision()  # before: the checkout may move while the run goes on
    load_before = _loadavg()
    started = time.monotonic()
    all_results: list[Results] = []
    for loop in loops:
        log(f"{s.mode} run on {loop}: rows {', '.join(r.name for r in rows)}")
        all_results.append(
            asyncio.run(
                run_loop(s, rows, phases, loop, not args.no_pin, None if redis_missing else redis)
            )
        )
    elapsed = time.monotonic() - started

    info: dict[str, Any] = {"git": revision}
    for results in all_results:
        info.update(results.info)
    lines = header_lines(s, argv, loops, info)
    lines.append(
        f"- Wall time of the whole run: {elapsed:.0f} s. Load average (1 min) before: "
        f"{load_before}, after: {_loadavg()} (other work on the machine shows up here and "
        "widens the min–max spreads)."
    )
    for row in skipped:
        lines.append(f"- Row `{row.name}` not run: `{row.needs}` is not installed.")
    if redis_missing:
        lines.append(f"- Phase `scaleout` not run: {redis_missing}.")
    if s.big_conns is None:
        lines.append(
            f"- {s.mode} mode: the many-idle-connections figure uses the "
            f"{s.idle_conns:,} connections of the RSS runs, not 10,000."
        )
    lines.append("")
    lines.append("## Results")
    lines.append("")
    for results in all_results:
        lines += report(s, rows + skipped, results, phases)
        lines.append("")
    lines.append(METHOD)
    text = "\n".join(lines)
    print(text)

    output = args.output
    if output is None:
        output = "-" if args.smoke else str(QUICK_RESULTS if args.quick else RESULTS)
    if output != "-":
        Path(output).write_text(text)
        log(f"wrote {output}")
    return 1 if any(r.errors for r in all_results) else 0
