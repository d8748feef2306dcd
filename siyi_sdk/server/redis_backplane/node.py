"""One node's link to Redis: the client, calls that survive an outage, the subscription.

`RedisNode` is the base of `RedisBackplane`. It connects (a blocking pool: a burst of calls
waits for a connection instead of failing), marks the node alive, subscribes to the two
channels of the node (``<prefix>:all`` and ``<prefix>:node:<node>``) and reconnects with
backoff (tenacity) when Redis goes away. While Redis is down, `call` returns `UNREACHABLE`
at once and `must` raises `BackplaneUnavailableError`; the outage is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from tenacity import RetryCallState

from ...errors import BackplaneUnavailableError
from ...retry import backoff
from .messages import message
from .scripts import Scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["Fence", "RedisNode"]

logger = logging.getLogger(__name__)


class Fence:
    """A marker a script publishes on this node's own channel, right after its change.

    Messages on one subscription arrive in the order Redis published them, so when the fence
    is back every message published before the change has been handled by this node (its
    calls and its subscription are two connections: a call's answer can overtake them).

    Attributes:
        message: what the script publishes.
    """

    def __init__(self, message: bytes) -> None:
        self.message = message
        self._back = asyncio.Event()

    def came_back(self) -> None:
        """The node read the fence on its subscription (the listener calls this)."""
        self._back.set()

    async def passed(self, timeout: float) -> bool:
        """Wait until the fence came back; False if it did not within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._back.wait()
                return True
        return False


class RedisNode:
    """The connection of one server process (a node) to the Redis all nodes share.

    Its arguments are `RedisBackplane`'s (see there).

    Attributes:
        redis: the client.
        scripts: the backplane's Lua scripts, registered on `redis`.
        node_id: this node's random name.
        all_channel: the channel every node listens on (broadcasts, session ends).
        channel_prefix: the name of a node's own channel, without the node.
        connected: True while this node is subscribed and Redis answers.
    """

    UNREACHABLE: Any = object()
    """What `call` returns when Redis could not be reached."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        node_ttl: float,
        op_timeout: float,
        retry_initial: float,
        retry_max: float,
        sleep: Callable[[float], Awaitable[None]],
        client: Redis | None,
        max_connections: int,
    ) -> None:
        try:
            import redis.asyncio
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "RedisBackplane needs the redis package: pip install 'siyi-sdk[redis]'"
            ) from exc
        self.url = url
        self.prefix = prefix
        self.node_id = secrets.token_hex(6)
        self.node_ttl = node_ttl
        self.op_timeout = op_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.sleep = sleep
        if client is None:
            # A blocking pool: a burst of work (a thousand clients dropping at once) waits
            # for a free connection instead of failing as if Redis were down.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=op_timeout,
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
            )
            client = redis.asyncio.Redis(connection_pool=pool)
        self.redis: Redis = client
        self.redis_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        """What a failed Redis call raises (the others are bugs, not outages)."""
        self.connected = False
        """True while this node is subscribed and Redis answers."""
        self.outages = 0
        """Times Redis became unreachable (for the metrics)."""
        self.round_trip: float | None = None
        """Seconds the latest PING of the keep-alive took (for the metrics)."""
        self._ready = asyncio.Event()
        self.all_channel = self.key("all").encode()
        self._mine = self.channel(self.node_id).encode()
        self.channel_prefix = self.key("node:")
        self.scripts = Scripts(self.redis)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._fences: dict[str, Fence] = {}
        self._stopped = False

    # Names ------------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The Redis key `name` under this backplane's prefix."""
        return f"{self.prefix}:{name}"

    def channel(self, node: str) -> str:
        """The pub/sub channel of one node."""
        return self.key(f"node:{node}")

    # Calls ------------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Run one Redis call; `UNREACHABLE` (logged) when Redis is down.

        Does not even try while the node knows Redis is down: local traffic must not wait
        for connect timeouts. The listener notices the outage and its end.
        """
        if not self.connected:
            return self.UNREACHABLE
        try:
            return await fn(*args, **kwargs)
        except self.redis_errors as exc:
            self.lost(exc)
            return self.UNREACHABLE

    async def must(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Like `call`, for what cannot be done without Redis.

        Raises:
            BackplaneUnavailableError: Redis is down.
        """
        result = await self.call(fn, *args, **kwargs)
        if result is self.UNREACHABLE:
            raise BackplaneUnavailableError(
                f"the Redis backplane at {self.url} is unreachable: "
                "clients attached to other nodes cannot be reached now"
            )
        return result

    def _down(self, exc: BaseException) -> None:
        # Logged once per outage; the listener's retries log each attempt.
        if self.connected:
            self.outages += 1
            logger.error(
                "Redis backplane at %s lost: %s; serving local clients only", self.url, exc
            )
        self.connected = False
        self._ready.clear()

    def lost(self, exc: BaseException) -> None:
        """A Redis call failed with `exc`: Redis counts as down until the listener is back."""
        self._down(exc)
        listener = self._listener
        if listener is not None and listener is not asyncio.current_task() and not self._stopped:
            # Its subscription may look fine while calls fail: start over, with backoff.
            listener.cancel()
            self._listener = self.spawn(self._listen_forever())

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `coro` in a task of this node's own (cancelled by `stop`)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def node_alive(self, node: str) -> bool:
        """True while `node` refreshes its liveness (False also when Redis is down)."""
        if node == self.node_id:
            return True
        return bool(await self.call(self.redis.exists, self.key(f"n:{node}")) == 1)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until this node is connected to Redis and subscribed.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    @contextlib.contextmanager
    def fence(self) -> Iterator[Fence]:
        """A `Fence` for a script to publish on `channel(node_id)`, known while in the block."""
        token = secrets.token_hex(8)
        fence = self._fences[token] = Fence(message(b"F", {"f": token}))
        try:
            yield fence
        finally:
            del self._fences[token]

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; if Redis is down, log and keep retrying in the background."""
        self._stopped = False
        self._listener = self.spawn(self._listen_forever())
        # The first attempt is bounded: a server starts serving its own clients either way.
        with contextlib.suppress(TimeoutError):
            await self.wait_ready(self.op_timeout)

    async def stop(self) -> None:
        """Unsubscribe, drop this node's liveness, close the Redis connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        while self._tasks:
            # Asked again until they end: on Python 3.11 a Redis call can swallow a cancel
            # (redis-py writes through asyncio.wait_for, which returns normally when its inner
            # task finished as the cancel came), and the task then goes on as if never asked.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=0.1)
        if self.connected:
            with contextlib.suppress(*self.redis_errors):
                await self.redis.delete(self.key(f"n:{self.node_id}"))
                await self.redis.srem(self.key("nodes"), self.node_id)
        self.connected = False
        self._ready.clear()
        with contextlib.suppress(*self.redis_errors):
            await self.redis.aclose()

    async def _listen_forever(self) -> None:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                "Redis backplane at %s unreachable (%s); retrying in %.1f s", self.url, exc, delay
            )

        retrying = backoff(
            self.retry_initial, self.retry_max, self.sleep, self.redis_errors, log_retry
        )
        async for attempt in retrying:
            with attempt:
                await self._listen_once()

    async def _listen_once(self) -> None:
        me = asyncio.current_task()
        if self._listener is not me:
            return  # replaced (`lost`), though its cancel was swallowed: the other one listens
        pubsub: PubSub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.all_channel, self._mine)
            await self.redis.set(self.key(f"n:{self.node_id}"), b"1", px=int(self.node_ttl * 1000))
            await self.redis.sadd(self.key("nodes"), self.node_id)
            self.connected = True
            self._ready.set()
            logger.info("Redis backplane at %s: node %s joined", self.url, self.node_id)
            await self.on_subscribed()
            while self.connected and self._listener is me:
                got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if got is None or got["type"] != "message":
                    continue
                data = got["data"]
                if data[:1] == b"F":
                    self._fence_back(data)
                else:
                    await self.on_message(data)
            if self._listener is not me:
                return
            raise self.redis_errors[0]("a call to Redis failed")
        except self.redis_errors as exc:
            self._down(exc)
            raise
        finally:
            with contextlib.suppress(BaseException):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _fence_back(self, data: bytes) -> None:
        token = orjson.loads(data[1 : data.index(b"\n")])["f"]
        fence = self._fences.get(token)
        if fence is not None:
            fence.came_back()

    # What the node does with its subscription ---------------------------------------------------

    async def on_subscribed(self) -> None:
        """Called each time the node has (re)joined: after a start, and after an outage."""

    async def on_message(self, data: bytes) -> None:
        """Called with each message on the node's channels, one at a time, in order."""
