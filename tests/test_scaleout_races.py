"""Races of the Redis backplane, made to happen every time: one node's Redis traffic is held
at a chosen point (a command before it runs, a message before the node reads it) until the
test lets it go. The same races happen by chance in `test_scaleout.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import redis.asyncio
from redis.asyncio.client import PubSub
from websockets.asyncio.client import connect

from siyi_sdk import Connection, ProtocolServer, RedisBackplane
from siyi_sdk.packets import SESSION_HEADER

from .conftest import (
    WAIT,
    ServerFactory,
    drop_raw,
    greeting_of,
    http_url,
    recv_frame,
    wait_for,
    wait_until,
    ws_url,
)
from .redis_server import RedisServer


class Hold:
    """A point where a node's Redis traffic stops until the test lets it go."""

    def __init__(self, *, stops: bool = True) -> None:
        self.reached = asyncio.Event()
        self._go = asyncio.Event()
        if not stops:
            self._go.set()

    async def pass_by(self) -> None:
        self.reached.set()
        await self._go.wait()

    def let_go(self) -> None:
        self._go.set()


def _label(args: tuple[Any, ...]) -> str:
    """What a hold is keyed by: the command, the script of an EVALSHA, "SET r" for the key
    that notes which node waits for a request's answer."""
    command = str(args[0]).upper()
    if command == "EVALSHA":
        return f"EVALSHA {args[1]}"
    if command == "SET" and ":r:" in str(args[1]):
        return "SET r"
    return command


class SteeredRedis(redis.asyncio.Redis):
    """The Redis client of one node, with holds: `before` a command is sent, `after` its
    answer came (a hold that does not stop: the test only learns it happened), and before
    the node reads a message of a kind (``"message B"``: a broadcast)."""

    before: dict[str, Hold]
    after: dict[str, Hold]

    @classmethod
    def at(cls, url: str) -> SteeredRedis:
        client = cls.from_url(url)
        assert isinstance(client, SteeredRedis)
        client.before, client.after = {}, {}
        return client

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        label = _label(args)
        if (hold := self.before.get(label)) is not None:
            await hold.pass_by()
        result = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        if (hold := self.after.get(label)) is not None:
            await hold.pass_by()
        return result

    def pubsub(self, **kwargs: Any) -> PubSub:
        return SteeredPubSub(self, self.connection_pool, **kwargs)


class SteeredPubSub(PubSub):
    def __init__(self, client: SteeredRedis, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> Any:
        message = await super().get_message(ignore_subscribe_messages, timeout)
        if message is not None and message["type"] == "message":
            kind = bytes(message["data"][:1]).decode()
            if (hold := self.client.before.get(f"message {kind}")) is not None:
                await hold.pass_by()
        return message


async def steered_node(
    make_server: ServerFactory, redis_server: RedisServer, prefix: str
) -> tuple[ProtocolServer, RedisBackplane, SteeredRedis]:
    client = SteeredRedis.at(redis_server.url)
    backplane = RedisBackplane(redis_server.url, prefix=prefix, client=client)
    return await make_server(backplane=backplane), backplane, client


async def test_broadcasts_the_old_node_reads_after_its_release_still_reach_the_buffer(
    make_server: ServerFactory, redis_server: RedisServer, redis_prefix: str
) -> None:
    """A broadcast numbered before the release, read by the old node after Redis answered
    the release (its subscription and its calls are two connections): it is buffered, not
    lost (the node waits until its subscription has caught up with the release)."""
    a, backplane, client = await steered_node(make_server, redis_server, redis_prefix)
    b = await make_server(backplane=RedisBackplane(redis_server.url, prefix=redis_prefix))
    left = asyncio.Event()

    def disconnected(connection: Connection) -> None:
        left.set()

    a.on_disconnect(disconnected)
    ws = await connect(ws_url(a))
    key = (await greeting_of(ws))["session"]
    late = client.before["message B"] = Hold()
    released = client.after[f"EVALSHA {backplane.scripts.release.sha}"] = Hold(stops=False)
    for n in range(3):
        await b.broadcast_event("late", n)  # the session is on node a: they go there
    await wait_for(late.reached.wait())
    await drop_raw(ws)
    await wait_for(released.reached.wait())  # Redis answered: the session is away
    late.let_go()
    await wait_for(left.wait())  # the release is over
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{http_url(b)}/events", params={"wait": "0"}, headers={SESSION_HEADER: key}
        ) as resp,
    ):
        got = await resp.json()
    assert [p["data"] for p in got] == [0, 1, 2]


async def test_a_request_sent_as_the_replay_ends_goes_down_the_websocket(
    make_server: ServerFactory, redis_server: RedisServer, redis_prefix: str
) -> None:
    """A request to a peer still being replayed to waits for Redis to note which node asks;
    if the replay ends meanwhile, the request goes straight down the WebSocket (it used to
    wait for a replay that had already happened, and time out)."""
    a, _, client = await steered_node(make_server, redis_server, redis_prefix)
    replay = client.before["ZPOPMIN"] = Hold()
    ws = await connect(ws_url(a))
    key = (await greeting_of(ws))["session"]
    await wait_for(replay.reached.wait())  # the replay of the shared buffer is under way
    handle = await a.find_session(key)
    assert handle is not None
    noted = client.before["SET r"] = Hold()
    asking = asyncio.create_task(a.send_request(handle, "echo", {"n": 1}, timeout=WAIT))
    await wait_for(noted.reached.wait())  # the request waits for Redis
    replay.let_go()
    await wait_until(lambda: handle.direct_peer() is not None)  # the replay is over
    noted.let_go()
    request = await recv_frame(ws)
    assert (request["type"], request["command"]) == ("request", "echo")
    answer = {"id": request["id"], "type": "response", "status": "ok", "code": 0, "data": 1}
    await ws.send(orjson.dumps(answer).decode())
    response = await wait_for(asking)
    assert response.data == 1
    await ws.close()


async def test_stop_ends_a_task_that_swallowed_its_cancellation(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """On Python 3.11 a Redis call can swallow a cancellation (redis-py writes through
    `asyncio.wait_for`, which returns normally when its inner task finished as the cancel
    came): `stop` must still end every task of the node, not wait for it forever."""
    backplane = RedisBackplane(redis_server.url, prefix=redis_prefix)
    await backplane.start()
    waiting = asyncio.Event()
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # as the Redis call does: the task goes on
        await asyncio.Event().wait()

    backplane.spawn(stubborn())
    await wait_for(waiting.wait())
    await wait_for(backplane.stop())
    assert swallowed.is_set()
